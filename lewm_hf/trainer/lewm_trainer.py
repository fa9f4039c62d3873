"""The trainers: `LeWMTrainer` for world models and `WalkLMTrainer` for the encoder phase.

Both own their callbacks and build their run's `result.json` payload (`build_result`) from the
Trainer's log history, which every checkpoint saves, so a resumed run's curves are continuous.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainerState

from .. import metric_keys as K
from ..checkpoints import check_checkpoint_dir
from ..data.collators import DataCollatorForLeWM, DataCollatorForWalkLM
from ..data.streaming import StreamingDataset
from ..distributed import convert_to_global_batchnorm, is_distributed
from ..errors import LeWMConfigError
from ..hub import HubMixin
from ..losses import prediction_loss
from ..modeling_actions import check_input_values
from .callbacks import (
    CollapseMonitorCallback,
    ComplianceGateCallback,
    MappedPagesCallback,
    NonFiniteLossGuard,
    WSDSchedulerCallback,
)
from .feature_cache import FEATURE_INDEX, FeatureCache, FeatureCacheCollator, encoder_fingerprint
from .lewm_config import (
    LeWMTrainingArguments,
    WalkLMTrainingArguments,
    check_model_arguments,
    check_streaming,
    check_streaming_feature_cache,
    check_torch_compile,
    check_warmup,
)
from .lora import ParameterReport, prepare_lora_model, strip_peft_prefix
from .private_api import check_private_api
from .results import ResultMixin
from .schedules import get_wsd_scheduler

# Dataset columns the LeWM collator reads.
COLLATOR_COLUMNS = (
    "tokens",
    "actions",
    "input_ids",
    "action_mask",
    "locus",
    "edits",
    "edit_ops",
    "edit_positions",
    "edit_tokens",
    FEATURE_INDEX,
)
# `Trainer` arguments that `LeWMTrainer` would ignore: its `compute_loss` runs the model's own
# loss and its evaluation returns no predictions (so `compute_metrics` is never called).
IGNORED_TRAINER_ARGUMENTS = {
    "compute_loss_func": "LeWMTrainer's loss is the model's (pred_loss, regularizer, reg_weight "
    "in LeWMConfig); a compute_loss_func would never be called",
    "compute_metrics": "LeWMTrainer's evaluation returns no predictions, so compute_metrics would "
    "never be called; its metrics (pred_loss, reg_loss, pred_mse, copy_mse) are logged as eval_*",
    "preprocess_logits_for_metrics": "LeWMTrainer's evaluation returns no logits, so it would "
    "never be called",
}
# Folder of the output dir where a feature cache too large for memory is written.
FEATURE_CACHE_DIR = "feature_cache"
# Optimizer keyword arguments that replace the parameter groups (GaLore, APOLLO, LOMO).
MODEL_OPTIMIZER_KWARGS = ("params", "model", "optimizer_dict")
# Parameter-name fragments that never get weight decay (biases, norms, embeddings).
NO_DECAY_PATTERNS = ("bias", "norm", "embed", "bn", "ln_", ".ln")
# Model parts and the argument holding their LR multiplier; the first matching prefix wins.
PART_MULTIPLIERS = (
    ("encoder.", "encoder_lr_multiplier"),
    ("projector.", "encoder_lr_multiplier"),
    ("action_encoder.", "action_encoder_lr_multiplier"),
    ("predictor.", "predictor_lr_multiplier"),
)


def parameter_groups(model: nn.Module, args: LeWMTrainingArguments) -> list[dict[str, Any]]:
    """AdamW parameter groups: (part LR multiplier) x (decay / no decay).

    Biases, normalisation and embedding parameters get no weight decay; each part (encoder and
    its projector, action encoder, predictor) gets `learning_rate * <part>_lr_multiplier`. Frozen
    parameters are left out.

    Args:
        model (`nn.Module`): The (unwrapped) LeWM model, or its peft wrapper (whose names carry
            a `base_model.model.` prefix, removed here so the parts are found).
        args (`LeWMTrainingArguments`): The arguments.

    Returns:
        `list[dict[str, Any]]`: Groups with `params`, `lr`, `weight_decay` and a `name`.
    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = strip_peft_prefix(name)
        multiplier_name = next(
            (m for prefix, m in PART_MULTIPLIERS if name.startswith(prefix)), None
        )
        multiplier = getattr(args, multiplier_name) if multiplier_name else 1.0
        lowered = name.lower()
        decay = param.ndim >= 2 and not any(p in lowered for p in NO_DECAY_PATTERNS)
        key = (multiplier_name or "other", decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": args.learning_rate * multiplier,
                "weight_decay": args.weight_decay if decay else 0.0,
                "name": f"{key[0]}/{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append(param)
    return list(groups.values())


class HostCheckedCollator:
    """A collator whose batches get `LeWMModel.forward`'s value checks on the host.

    `check_input_values` (action ids within their vocabularies, trailing padding) reads the
    values of the collated tensors before they reach the device, in the data loader; the
    trainer then calls the model with `check_values=False`, so that no training step waits for
    the device to answer a question about its inputs. Other attributes are the wrapped
    collator's.

    Args:
        collator (`Callable`): The collator to wrap.
        config (`LeWMConfig`): The model's configuration.
    """

    def __init__(self, collator: Any, config: Any):
        self.collator = collator
        self.config = config

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        check_input_values(self.config, batch)
        return batch

    def __getattr__(self, name: str) -> Any:
        if name in ("collator", "config"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.collator, name)


class _StreamingMixin:
    """`dataset_streaming`: the trainer trains on a `StreamingDataset` over its training split.

    The split is wrapped once the `Trainer` is built. The `Trainer` puts the stream (an
    `IterableDataset`) into a plain data loader that accelerate prepares: under several
    processes every rank reads the same stream and keeps its own rows of each global batch
    (`IterableDatasetShard`; `check_streaming` turns `dispatch_batches` off), so the global
    batches are those of one process at the global batch size. The stream is therefore not
    split by rank beforehand (`split_dataset_by_node`), which would shard it twice. A resumed
    run continues the stream where it stopped: `get_resumed_dataloader` skips the consumed
    rows by index, reading none.
    """

    def _stream_train_dataset(self) -> None:
        args = self.args
        if not getattr(args, "dataset_streaming", False) or self.train_dataset is None:
            return
        check_streaming(args)
        if isinstance(self.train_dataset, StreamingDataset):
            return
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.train_dataset = StreamingDataset(
            self.train_dataset,
            buffer_size=args.streaming_buffer_size,
            seed=seed,
            rows_per_batch=self._stream_rows_per_batch(),
        )

    def _stream_rows_per_batch(self) -> int:
        """Rows of the stream per batch of the prepared loader: `train_batch_size` per process
        (every rank reads the global batch and keeps its part), or in all with
        `split_batches`."""
        rows = self.args.train_batch_size
        if not self.accelerator.split_batches:
            rows *= self.accelerator.num_processes
        return rows

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """A data loader `num_batches` batches into the stream (on resume).

        A `StreamingDataset` skips the rows of those batches by index, reading none; any other
        dataset is skipped by the `Trainer`'s own replay.
        """
        dataset = self.train_dataset
        if not isinstance(dataset, StreamingDataset):
            return super().get_resumed_dataloader(dataloader, num_batches)
        self.train_dataset = dataset.skip(num_batches * self._stream_rows_per_batch())
        try:
            return self.get_train_dataloader()
        finally:
            self.train_dataset = dataset


class LeWMTrainer(_StreamingMixin, HubMixin, ResultMixin, Trainer):
    """A `Trainer` for `LeWMModel`.

    - `compute_loss` runs the model (latent prediction loss + SIGReg or Gaussian KL, as the
      model's config says) and records `pred_loss`, `reg_loss`
      and, in evaluation, `pred_mse` and `copy_mse` (the copy baseline `z_hat = z_t`); `log`
      averages them over the logging window and over the ranks (prefixed `eval_` in
      evaluation), so they reach `report_to` backends and can drive `metric_for_best_model`.
    - Distributed (DDP, FSDP, DeepSpeed), every BatchNorm normalises over the global batch
      (`sync_batchnorm`, `lewm_hf.distributed`), as SIGReg does; docs/distributed.md.
    - A step whose loss is NaN or Inf on any rank is skipped on every rank and counted
      (`nonfinite_steps`); `max_nonfinite_steps` in a row raise `LeWMNonFiniteLossError`.
    - The learning rate follows `lr_schedule` (`wsd` by default) through a `LambdaLR` that the
      Trainer checkpoints, with per-part LR multipliers and no weight decay on biases, norms
      and embeddings. The optimizer is `optim`'s (or `optimizer_cls_and_kwargs`'s) class built
      on those groups; one that builds its own groups (GaLore, APOLLO, LOMO) is an error.
    - Inherited arguments it would not honour are errors: the fields of
      `LEWM_UNUSED_ARGUMENTS` (checked by `LeWMTrainingArguments`), `compute_loss_func`,
      `compute_metrics` and `preprocess_logits_for_metrics`, and `check_model_arguments`.
    - It checks at start-up that the private Trainer, peft and torch hooks it relies on exist
      (`lewm_hf.trainer.private_api`).
    - Gradient accumulation keeps the loss scale: each micro-batch's mean loss is divided by
      the number of accumulation steps (the model takes no loss kwargs).
    - It owns a `CollapseMonitorCallback` (its state is restored on resume) and a
      `WSDSchedulerCallback`, and shows the loss on the progress bar.
    - With `lora_targets` it wraps the model with peft itself (`lewm_hf.trainer.lora`):
      checkpoints and the final output then hold the adapters, and `result.json` the
      trainable parameter count (`trainable_params`, `trainable_fraction`) and LoRA settings.

    Args:
        model (`LeWMModel`): The model.
        args (`LeWMTrainingArguments`): The arguments.
        data_collator (*optional*): Defaults to `DataCollatorForLeWM(window)`.
        window (`int`, *optional*): State window for move clips (for the default collator).
        **kwargs: Passed to `Trainer`.
    """

    def __init__(
        self,
        model: nn.Module,
        args: LeWMTrainingArguments,
        data_collator=None,
        window: int | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, LeWMTrainingArguments):
            raise TypeError("LeWMTrainer needs LeWMTrainingArguments")
        check_private_api()
        for name, reason in IGNORED_TRAINER_ARGUMENTS.items():
            if kwargs.get(name) is not None:
                raise LeWMConfigError(name, kwargs[name], reason)
        check_torch_compile(args)
        if data_collator is None:
            data_collator = DataCollatorForLeWM(window=window)
        # LoRA (`lora_targets`): the trainer wraps the model with peft itself, as TRL's do.
        model = prepare_lora_model(model, args)
        # Under DDP / FSDP every BatchNorm normalises over the global batch, as SIGReg does
        # (docs/design.md, section 10 (Distributed rules)). The swap is done here, not in the
        # model, so a saved model is a plain `LeWMModel` with `nn.BatchNorm1d` layers; parameter
        # and buffer names are kept.
        if args.sync_batchnorm and (args.world_size > 1 or is_distributed()):
            model = convert_to_global_batchnorm(model, args.device)
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        self.data_collator = HostCheckedCollator(self.data_collator, model.config)
        self.parameter_report = ParameterReport(model, args)
        # The model averages its loss per micro-batch; Trainer then divides by the number of
        # accumulation steps, which keeps the scale of the optimised and logged loss.
        self.model_accepts_loss_kwargs = False
        # Per-step metric tensors, kept on the device: `log` reduces them over the logging
        # window and the ranks with one collective and one host sync. A training step's entries
        # carry its "kept" flag (0 for a skipped non-finite step), decided on the device too.
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._metric_keep: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.latest_latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.wsd_callback = WSDSchedulerCallback(args.lr_schedule, 0)
        self.add_callback(self.wsd_callback)
        self.nonfinite_guard = NonFiniteLossGuard(args.max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)
        self._step_snapshot: dict[str, Any] | None = None
        self._batchnorm_buffers: list[torch.Tensor] | None = None
        self.collapse_monitor: CollapseMonitorCallback | None = None
        if args.collapse_monitor_steps > 0:
            self.collapse_monitor = CollapseMonitorCallback.from_args(self, args)
            self.add_callback(self.collapse_monitor)
        self._use_summary_progress()
        self.add_callback(MappedPagesCallback(self))
        check_streaming_feature_cache(args, model.config.encoder_mode)
        self.feature_cache: FeatureCache | None = None
        if args.frozen_feature_cache and model.config.encoder_mode == "frozen":
            self._attach_feature_cache()
        check_model_arguments(args, model, self.feature_cache is not None)
        self._stream_train_dataset()

    def _attach_feature_cache(self) -> None:
        """Compute the frozen encoder's features of every train/eval state once (see
        `FeatureCache`) and collate `state_features` from them from now on."""
        names = [
            n for n in ("train_dataset", "eval_dataset") if isinstance(getattr(self, n), Dataset)
        ]
        if not names:
            return
        args = self.args
        self.feature_cache, indexed = FeatureCache.build(
            self.model,
            [getattr(self, n) for n in names],
            self.data_collator,
            max_memory_bytes=int(args.feature_cache_memory_mb * 2**20),
            path=Path(args.output_dir) / FEATURE_CACHE_DIR / f"features-{args.process_index}.bin",
            disable_progress=args.disable_tqdm or not self.is_world_process_zero(),
        )
        for name, dataset in zip(names, indexed):
            setattr(self, name, dataset)
        self.data_collator = FeatureCacheCollator(self.data_collator, self.feature_cache)

    def _check_feature_cache(self) -> None:
        if self.feature_cache is None:
            return
        encoder = self.accelerator.unwrap_model(self.model).encoder
        if encoder_fingerprint(encoder) != self.feature_cache.fingerprint:
            raise LeWMConfigError(
                "frozen_feature_cache",
                True,
                "the encoder's weights differ from those the cached features were computed with",
            )

    def train(self, *args: Any, **kwargs: Any):
        """`Trainer.train`, after checking that cached features match the encoder's weights
        (a resumed or reloaded encoder must not reuse another encoder's features) and that a
        checkpoint to resume from is whole (`lewm_hf.checkpoints.check_checkpoint_dir`)."""
        self._check_feature_cache()
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        if isinstance(resume, (str, os.PathLike)):
            check_checkpoint_dir(resume, "resume_from_checkpoint")
        self._batchnorm_buffers = None  # found again in the model this run trains
        output = super().train(*args, **kwargs)
        self.nonfinite_guard.flush(self.state)
        return output

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # Skipped steps are counted, and a run of `max_nonfinite_steps` raises, before anything
        # is saved (the skip itself was decided on the device; see `training_step`).
        self.nonfinite_guard.flush(self.state)
        super()._save_checkpoint(model, trial)

    result_curves: ClassVar[dict[str, str]] = K.WORLD_MODEL_CURVES

    @property
    def result_contributors(self) -> list[Any]:
        monitor = [self.collapse_monitor] if self.collapse_monitor is not None else []
        return [*monitor, self.parameter_report, self.nonfinite_guard]

    def _load_callback_state(self) -> None:
        # The Trainer restores stateful callbacks by re-creating them from their `state()` args
        # (and only with `restore_callback_states_from_checkpoint`), which would lose the monitor's
        # reference to this trainer; the monitor's history is part of the run, so it is restored
        # in place, always.
        saved = self.state.stateful_callbacks.get(CollapseMonitorCallback.__name__)
        if self.collapse_monitor is not None and saved:
            self.collapse_monitor.restore(saved[0] if isinstance(saved, list) else saved)
        saved = self.state.stateful_callbacks.get(NonFiniteLossGuard.__name__)
        if saved:
            self.nonfinite_guard.restore(saved[0] if isinstance(saved, list) else saved)
        super()._load_callback_state()

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ) -> tuple[int, int]:
        # Resuming a checkpoint that already reached `max_steps`, transformers (5.24) still runs
        # the rest of the checkpoint's epoch when `max_steps` is not a multiple of the epoch
        # length: `DefaultFlowCallback` stops training only after a step has run. Such a run is
        # complete: report "all epochs trained" so that the loop runs no step at all.
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None and self.state.global_step >= max_steps:
            return num_train_epochs, 0
        return epochs_trained, steps_in_epoch

    def final_metrics(self) -> dict[str, float]:
        """Evaluation metrics of the final model: the last logged evaluation when it ran at the
        final step on the final weights (no best-model reload), else a fresh `evaluate()`."""
        evals = [e for e in self.state.log_history if K.EVAL_PRED_MSE in e]
        if (
            evals
            and evals[-1]["step"] == self.state.global_step
            and not self.args.load_best_model_at_end
        ):
            return evals[-1]
        return self.evaluate()

    def _set_signature_columns_if_needed(self) -> None:
        # The collator turns clip columns (`tokens`, `actions`, ...) into forward arguments, so
        # `remove_unused_columns=True` must keep them too.
        super()._set_signature_columns_if_needed()
        for column in COLLATOR_COLUMNS:
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ---- optimisation ----
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = model if model is not None else self.model
            groups = parameter_groups(model, self.args)
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(
                    self.args, model
                )
            optimizer_kwargs = dict(optimizer_kwargs)
            # A factory (not an Optimizer class, as the Trainer tells them apart: Muon, Dion)
            # or kwargs that replace the parameters build their own groups.
            factory = not (
                isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
            )
            if factory or any(k in optimizer_kwargs for k in MODEL_OPTIMIZER_KWARGS):
                given = self.optimizer_cls_and_kwargs is not None
                raise LeWMConfigError(
                    "optimizer_cls_and_kwargs" if given else "optim",
                    optimizer_cls if given else getattr(self.args.optim, "value", self.args.optim),
                    f"{getattr(optimizer_cls, '__name__', optimizer_cls)} builds its own "
                    "parameter groups, and LeWMTrainer needs its per-part groups (LR "
                    "multipliers, no decay on norms): use e.g. adamw_torch_fused",
                )
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(
                [{k: v for k, v in g.items() if k != "name"} for g in groups],
                lr=self.args.learning_rate,
                **optimizer_kwargs,
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            check_warmup(self.args, num_training_steps)
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.wsd_callback.warmup_steps = warmup
            self.lr_scheduler = get_wsd_scheduler(
                optimizer, num_training_steps, warmup, schedule=self.args.lr_schedule
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---- loss and metrics ----
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        mode = "train" if model.training else "eval"
        # `HostCheckedCollator` checked the input values on the host already.
        outputs = model(**inputs, step=self.state.global_step, check_values=False)
        # Metric tensors stay on the device (no per-step host sync); `log` reduces them.
        metrics = self._metrics[mode]
        metrics[K.PRED_LOSS].append(outputs.pred_loss.detach().float())
        metrics[K.REG_LOSS].append(outputs.reg_loss.detach().float())
        if mode == "eval":
            mask = inputs["actions"].mask  # the model checked that it has `actions`
            latents = outputs.latents.detach()
            targets = outputs.targets.detach()
            pred_mse = prediction_loss(outputs.predictions.detach(), targets, mask, "mse")
            copy_mse = prediction_loss(latents[:, :-1], targets, mask, "mse")
            metrics[K.PRED_MSE].append(pred_mse.float())
            metrics[K.COPY_MSE].append(copy_mse.float())
        else:
            self.latest_latents = (
                outputs.predictions.detach(),
                outputs.targets.detach(),
                outputs.reg_loss.detach().float(),
            )
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """`Trainer.training_step`, skipping optimizer steps whose loss is not finite, without
        synchronising the host with the device.

        Before the first micro-batch of an optimizer step the BatchNorm running statistics are
        copied; after the last one a flag "some micro-batch's loss was NaN or Inf" is summed over
        the ranks (one collective), so that every rank decides alike. The decision stays on the
        device: with a fused torch optimizer (`adamw_torch_fused`, the default, or any fused
        Adam / AdamW / SGD) the flag is the optimizer's `found_inf` (the mechanism of
        `torch.amp.GradScaler`: the update and the step count are left as they were), the
        running statistics are restored with `torch.where`, and the step's metrics and the
        collapse monitor's latents are dropped by weight. `nonfinite_guard` counts the skipped
        steps at the next log or checkpoint (and at the end of training), one host sync each,
        and raises `LeWMNonFiniteLossError` there after `max_nonfinite_steps` in a row, before
        anything is saved. Other optimizers (and an fp16 gradient scaler or DeepSpeed, which
        step themselves) read the flag on the host at every optimizer step, drop the gradients
        of a skipped step (`zero_grad(set_to_none=True)`: the optimizer then leaves every
        parameter and its state untouched) and count it at once. Either way the learning-rate
        schedule and the global step advance as for any step, and the loss returned for a
        non-finite micro-batch is the logging window's mean so far, as the Trainer's
        `logging_nan_inf_filter` would log (that filter itself reads every loss on the host,
        so `LeWMTrainingArguments` turns it off). (Under DeepSpeed, accelerate steps the engine
        inside `backward`: such a step is counted and stops the run, but its update is not
        undone.)
        """
        if self._step_snapshot is None:
            self._step_snapshot = self._snapshot_step(model)
        loss = super().training_step(model, inputs, num_items_in_batch)
        snapshot = self._step_snapshot
        finite = torch.isfinite(loss)
        snapshot["nonfinite"] = snapshot["nonfinite"] + (~finite).float()
        if self.accelerator.sync_gradients:  # the last micro-batch: the optimizer steps next
            self._step_snapshot = None
            flag = self.accelerator.reduce(snapshot["nonfinite"].reshape(1), reduction="sum")
            skip = flag.reshape(()) > 0
            step = self.state.global_step + 1
            optimizer = self._device_skip_optimizer()
            if optimizer is not None:
                self._restore_step(snapshot, skip)
                self.nonfinite_guard.defer(skip, step, optimizer)
            else:
                finite_step = not bool(skip.item())  # one host sync per optimizer step
                if not finite_step:
                    model.zero_grad(set_to_none=True)
                self._restore_step(snapshot, skip)
                self.nonfinite_guard.record(finite_step, step, self.state)
        return self._window_mean_if_nonfinite(loss, finite)

    def _device_skip_optimizer(self) -> torch.optim.Optimizer | None:
        """The torch optimizer when it can skip a step on the device (`found_inf`), else None."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper
        fused = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD))
        fused = fused and bool(optimizer.defaults.get("fused"))
        if not fused or self.is_deepspeed_enabled:
            return None
        if getattr(self.accelerator, "scaler", None) is not None:  # it sets `found_inf` itself
            return None
        return optimizer

    def _window_mean_if_nonfinite(self, loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """`loss`, or where it is NaN / Inf the Trainer's stand-in for it: the mean of the
        logging window's losses so far (`Trainer`'s `logging_nan_inf_filter`), on the device."""
        tr_loss = getattr(self, "_tr_loss", None)
        if not isinstance(tr_loss, torch.Tensor):
            return loss
        done = 1 + self.state.global_step - self._globalstep_last_logged
        stand_in = (tr_loss / done).to(device=loss.device, dtype=loss.dtype)
        return torch.where(finite, loss, stand_in)

    def _snapshot_step(self, model: nn.Module) -> dict[str, Any]:
        """What a skipped step must put back: BatchNorm running statistics and the collapse
        monitor's latents."""
        if self._batchnorm_buffers is None:  # the model's structure is fixed once training runs
            self._batchnorm_buffers = [
                buffer
                for module in model.modules()
                if isinstance(module, nn.modules.batchnorm._BatchNorm)
                for buffer in module.buffers(recurse=False)
            ]
        return {
            "buffers": [(buffer, buffer.detach().clone()) for buffer in self._batchnorm_buffers],
            "latest_latents": self.latest_latents,
            "nonfinite": torch.zeros((), device=self.args.device),
        }

    def _restore_step(self, snapshot: dict[str, Any], skip: torch.Tensor) -> None:
        """Undo a skipped step's side effects where `skip` (a 0-dim bool tensor) is true,
        choosing on the device: running statistics, metric weights, collapse-monitor latents."""
        with torch.no_grad():
            for buffer, saved in snapshot["buffers"]:
                buffer.copy_(torch.where(skip, saved, buffer))
        keep = (~skip).float()
        for key, values in self._metrics["train"].items():
            weights = self._metric_keep[key]
            weights.extend([keep] * (len(values) - len(weights)))
        previous = snapshot["latest_latents"]
        if previous is not None and self.latest_latents is not None:
            same = all(a.shape == b.shape for a, b in zip(previous, self.latest_latents))
            if same:
                self.latest_latents = tuple(
                    torch.where(skip, a, b) for a, b in zip(previous, self.latest_latents)
                )

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs).detach()
        return loss, None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if K.LOSS in logs else "eval" if K.EVAL_LOSS in logs else None
        if mode is not None:
            prefix = K.EVAL_PREFIX if mode == "eval" else ""
            logs.update({f"{prefix}{k}": v for k, v in self._reduce_metrics(mode).items()})
            self._metrics[mode].clear()
            if mode == "train":
                self._metric_keep.clear()
        if mode == "train":
            logs.update(self.wsd_callback.extra_logs())
            self.nonfinite_guard.flush(self.state)  # may raise after a run of skipped steps
            logs[K.NONFINITE_STEPS] = float(self.nonfinite_guard.total)
        super().log(logs, start_time)

    def _reduce_metrics(self, mode: str) -> dict[str, float]:
        """The mean of each metric over the logging window, then over the ranks.

        Entries of skipped training steps weigh 0; a metric whose every entry was skipped is
        left out, as before any was recorded. Every rank logs at the same steps with the same
        keys, so the per-rank sums and weights travel in one gathered vector (as TRL's
        `gather_for_metrics`, without its deduplication of the last evaluation batch, which
        applies to per-sample values only): one collective and one host sync per log, none
        per step.
        """
        keys = sorted(k for k, values in self._metrics[mode].items() if values)
        if not keys:
            return {}
        sums, counts = [], []
        for key in keys:
            values = torch.stack(self._metrics[mode][key]).float()
            keep = self._metric_keep.get(key) if mode == "train" else None
            if keep:  # entries recorded after the last optimizer step (if any) weigh 1
                weights = torch.ones_like(values)
                weights[: len(keep)] = torch.stack(keep).to(values.device)
                values = torch.where(weights > 0, values, 0.0)
                count = weights.sum()
            else:
                count = values.new_tensor(float(values.numel()))
            sums.append(values.sum())
            counts.append(count)
        local = torch.stack([torch.stack(sums), torch.stack(counts)])  # (2, keys)
        totals = self.accelerator.gather(local.unsqueeze(0)).sum(dim=0).tolist()
        return {k: total / count for k, total, count in zip(keys, *totals) if count > 0}


class WalkLMTrainer(_StreamingMixin, HubMixin, ResultMixin, Trainer):
    """A `Trainer` for the encoder phase: a causal LM on walks, stopped by a compliance gate.

    It owns its `ComplianceGateCallback`, configured by the `gate_*` fields of its
    `WalkLMTrainingArguments`: after every evaluation the LM generates walks from held-out
    prompts, and training stops (saving `gate_checkpoint/`) as soon as the gate passes.

    Args:
        model (`PreTrainedModel`): A causal LM whose vocabulary is the graph's vertices.
        args (`WalkLMTrainingArguments`): The arguments.
        graph (`Graph`), jumpers (`list[Jumper]`): The walk process the gate checks.
        prompt_walks (`np.ndarray`): Held-out walks; their first tokens are the prompts.
        context_window (`int`): The window `w`.
        data_collator (*optional*): Defaults to `DataCollatorForWalkLM()`.
        **kwargs: Passed to `Trainer`.
    """

    result_curves: ClassVar[dict[str, str]] = K.LM_CURVES

    def __init__(
        self,
        model: nn.Module,
        args: WalkLMTrainingArguments,
        graph,
        jumpers,
        prompt_walks: np.ndarray,
        context_window: int,
        data_collator=None,
        **kwargs: Any,
    ):
        if not isinstance(args, WalkLMTrainingArguments):
            raise TypeError("WalkLMTrainer needs WalkLMTrainingArguments")
        data_collator = data_collator if data_collator is not None else DataCollatorForWalkLM()
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        self.gate = ComplianceGateCallback(self, graph, jumpers, prompt_walks, context_window)
        self.add_callback(self.gate)
        self.add_callback(MappedPagesCallback(self))
        self._use_summary_progress()
        self._stream_train_dataset()

    @property
    def result_contributors(self) -> list[Any]:
        return [self.gate]

    @staticmethod
    def gate_passed_in(checkpoint: str | os.PathLike) -> TrainerState | None:
        """The trainer state saved in `checkpoint` when the gate had passed in it, else None.

        Resuming such a checkpoint must not train on: that would overwrite `gate_checkpoint/`
        with a later model while `result.json` keeps the first pass's step and numbers.
        """
        state = TrainerState.load_from_json(os.path.join(checkpoint, K.TRAINER_STATE_FILE))
        if any(e.get(K.EVAL_GATE_PASSED) == 1.0 for e in state.log_history):
            return state
        return None


class CausalLMTrainer(_StreamingMixin, HubMixin, ResultMixin, Trainer):
    """A plain `Trainer` for a causal LM (the DNA encoder phase) that writes `result.json`
    (train and eval loss curves) and the package's model card; no gate."""

    result_curves: ClassVar[dict[str, str]] = {K.EVAL_LOSS: K.EVAL_LOSS}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_callback(MappedPagesCallback(self))
        self._use_summary_progress()
        self._stream_train_dataset()
