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
from transformers.trainer_callback import ProgressCallback

from .. import metric_keys as K
from ..data.collators import DataCollatorForLeWM, DataCollatorForWalkLM
from ..errors import LeWMConfigError
from ..losses import prediction_loss
from ..reporting import curve, plot_curves, write_json
from .callbacks import (
    CollapseMonitorCallback,
    ComplianceGateCallback,
    SummaryProgressCallback,
    WSDSchedulerCallback,
)
from .feature_cache import FEATURE_INDEX, FeatureCache, FeatureCacheCollator, encoder_fingerprint
from .lewm_config import LeWMTrainingArguments, WalkLMTrainingArguments
from .schedules import get_wsd_scheduler

# Dataset columns the LeWM collator reads.
COLLATOR_COLUMNS = (
    "tokens",
    "actions",
    "input_ids",
    "action_mask",
    "locus",
    "edits",
    FEATURE_INDEX,
)
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
        model (`nn.Module`): The (unwrapped) LeWM model.
        args (`LeWMTrainingArguments`): The arguments.

    Returns:
        `list[dict[str, Any]]`: Groups with `params`, `lr`, `weight_decay` and a `name`.
    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
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


class _ResultMixin:
    """`result.json` of a trainer: curves from the log history plus each contributor's keys.

    Subclasses set `result_curves` (result curve name -> logged key) and `result_contributors`
    (objects with a `result(state) -> dict` method). The task runner writes the payload once,
    after training and the final evaluation.
    """

    result_curves: ClassVar[dict[str, str]] = {}

    def _use_summary_progress(self) -> None:
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(SummaryProgressCallback())

    @property
    def result_contributors(self) -> list[Any]:
        return []

    def build_result(self, phase: str, **extra: Any) -> dict[str, Any]:
        """The run's result: `phase`, `global_step`, `epoch`, `curves.train_loss` (every logged
        step) and the other curves, the train runtime, the contributors' keys and `extra`."""
        state: TrainerState = self.state
        curves = {K.TRAIN_LOSS: curve(state.log_history, K.LOSS)}
        for name, key in self.result_curves.items():
            curves[name] = curve(state.log_history, key)
        payload: dict[str, Any] = {
            "phase": phase,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "curves": curves,
        }
        final = [e for e in state.log_history if K.TRAIN_LOSS in e]
        if final:
            payload["train_runtime_s"] = final[-1].get(K.TRAIN_RUNTIME)
        for contributor in self.result_contributors:
            payload.update(contributor.result(state))
        payload.update(extra)
        return payload

    def write_result(self, payload: dict[str, Any]) -> None:
        """Write `result.json` and `curves.png` in the output dir (main process only)."""
        if not self.is_world_process_zero():
            return
        out = Path(self.args.output_dir)
        write_json(out / K.RESULT_FILE, payload)
        plot_curves(payload["curves"], out / K.CURVES_PLOT, payload["phase"])


class LeWMTrainer(_ResultMixin, Trainer):
    """A `Trainer` for `LeWMModel`.

    - `compute_loss` runs the model (latent prediction loss + SIGReg or Gaussian KL, as the
      model's config says) and records `pred_loss`, `reg_loss`
      and, in evaluation, `pred_mse` and `copy_mse` (the copy baseline `z_hat = z_t`); `log`
      averages them over the logging window (prefixed `eval_` in evaluation), so they reach
      `report_to` backends and can drive `metric_for_best_model`.
    - The learning rate follows `lr_schedule` (`wsd` by default) through a `LambdaLR` that the
      Trainer checkpoints, with per-part LR multipliers and no weight decay on biases, norms
      and embeddings.
    - Gradient accumulation keeps the loss scale: each micro-batch's mean loss is divided by
      the number of accumulation steps (the model takes no loss kwargs).
    - It owns a `CollapseMonitorCallback` (its state is restored on resume) and a
      `WSDSchedulerCallback`, and shows the loss on the progress bar.

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
        if data_collator is None:
            data_collator = DataCollatorForLeWM(window=window)
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        # The model averages its loss per micro-batch; Trainer then divides by the number of
        # accumulation steps, which keeps the scale of the optimised and logged loss.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.latest_latents: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self.wsd_callback = WSDSchedulerCallback(args.lr_schedule, 0)
        self.add_callback(self.wsd_callback)
        self.collapse_monitor: CollapseMonitorCallback | None = None
        if args.collapse_monitor_steps > 0:
            self.collapse_monitor = CollapseMonitorCallback.from_args(self, args)
            self.add_callback(self.collapse_monitor)
        self._use_summary_progress()
        self.feature_cache: FeatureCache | None = None
        if args.frozen_feature_cache and model.config.encoder_mode == "frozen":
            self._attach_feature_cache()

    def _attach_feature_cache(self) -> None:
        """Compute the frozen encoder's features of every train/eval state once (see
        `FeatureCache`) and collate `state_features` from them from now on."""
        names = [
            n for n in ("train_dataset", "eval_dataset") if isinstance(getattr(self, n), Dataset)
        ]
        if not names:
            return
        self.feature_cache, indexed = FeatureCache.build(
            self.model, [getattr(self, n) for n in names], self.data_collator
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
        (a resumed or reloaded encoder must not reuse another encoder's features)."""
        self._check_feature_cache()
        return super().train(*args, **kwargs)

    result_curves: ClassVar[dict[str, str]] = K.WORLD_MODEL_CURVES

    @property
    def result_contributors(self) -> list[Any]:
        return [self.collapse_monitor] if self.collapse_monitor is not None else []

    def _load_callback_state(self) -> None:
        # The Trainer restores stateful callbacks by re-creating them from their `state()` args
        # (and only with `restore_callback_states_from_checkpoint`), which would lose the monitor's
        # reference to this trainer; the monitor's history is part of the run, so it is restored
        # in place, always.
        saved = self.state.stateful_callbacks.get(CollapseMonitorCallback.__name__)
        if self.collapse_monitor is not None and saved:
            self.collapse_monitor.restore(saved[0] if isinstance(saved, list) else saved)
        super()._load_callback_state()

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
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
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
        outputs = model(**inputs, step=self.state.global_step)
        metrics = self._metrics[mode]
        metrics[K.PRED_LOSS].append(outputs.pred_loss.detach().float().item())
        metrics[K.REG_LOSS].append(outputs.reg_loss.detach().float().item())
        if mode == "eval":
            mask = inputs.get("action_mask")
            latents = outputs.latents.detach()
            targets = outputs.targets.detach()
            pred_mse = prediction_loss(outputs.predictions.detach(), targets, mask, "mse")
            copy_mse = prediction_loss(latents[:, :-1], targets, mask, "mse")
            metrics[K.PRED_MSE].append(pred_mse.float().item())
            metrics[K.COPY_MSE].append(copy_mse.float().item())
        else:
            self.latest_latents = (
                outputs.predictions.detach(),
                outputs.targets.detach(),
                outputs.reg_loss.detach().float().item(),
            )
        return (outputs.loss, outputs) if return_outputs else outputs.loss

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
            for key, values in self._metrics[mode].items():
                if values:
                    logs[f"{prefix}{key}"] = sum(values) / len(values)
            self._metrics[mode].clear()
        if mode == "train":
            logs.update(self.wsd_callback.extra_logs())
        super().log(logs, start_time)


class WalkLMTrainer(_ResultMixin, Trainer):
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
        self._use_summary_progress()

    @property
    def result_contributors(self) -> list[Any]:
        return [self.gate]

    @staticmethod
    def gate_passed_in(checkpoint: str | os.PathLike) -> TrainerState | None:
        """The trainer state saved in `checkpoint` when the gate had passed in it, else None.

        Resuming such a checkpoint must not train on: that would overwrite `gate_checkpoint/`
        with a later model while `result.json` keeps the first pass's step and numbers.
        """
        state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        if any(e.get(K.EVAL_GATE_PASSED) == 1.0 for e in state.log_history):
            return state
        return None
