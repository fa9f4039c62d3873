"""`LeWMTrainer`: the HF `Trainer` for action-conditioned JEPA world models."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..data.collators import DataCollatorForLeWM
from ..losses import prediction_loss
from .callbacks import CollapseMonitorCallback, WSDSchedulerCallback
from .lewm_config import LeWMTrainingArguments
from .schedules import get_wsd_scheduler

# Dataset columns the LeWM collator reads.
COLLATOR_COLUMNS = ("tokens", "actions", "input_ids", "action_mask", "locus", "edits")
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


class LeWMTrainer(Trainer):
    """A `Trainer` for `LeWMModel`.

    - `compute_loss` runs the model (latent prediction loss + SIGReg or Gaussian KL, per the
      arguments, which are copied into the model's config) and records `pred_loss`, `reg_loss`
      and, in evaluation, `pred_mse` and `copy_mse` (the copy baseline `z_hat = z_t`); `log`
      averages them over the logging window (prefixed `eval_` in evaluation), so they reach
      `report_to` backends and can drive `metric_for_best_model`.
    - The learning rate follows `lr_schedule` (`wsd` by default) through a `LambdaLR` that the
      Trainer checkpoints, with per-part LR multipliers and no weight decay on biases, norms
      and embeddings.
    - Gradient accumulation keeps the loss scale: each micro-batch's mean loss is divided by
      the number of accumulation steps (the model takes no loss kwargs).
    - A `CollapseMonitorCallback` and a `WSDSchedulerCallback` are added.

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
        for key, value in (
            ("pred_loss", args.pred_loss),
            ("regularizer", args.regularizer),
            ("reg_weight", args.reg_weight),
            ("phase", args.loss_phase),
            ("sigreg_num_slices", args.sigreg_num_slices),
        ):
            setattr(model.config, key, value)
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
            self.collapse_monitor = CollapseMonitorCallback(
                self,
                every_steps=args.collapse_monitor_steps,
                action=args.collapse_action,
                var_ratio=args.collapse_var_ratio,
                distance_ratio=args.collapse_distance_ratio,
                kl_max=args.collapse_kl_max,
                min_rank_fraction=args.collapse_min_rank_fraction,
            )
            self.add_callback(self.collapse_monitor)

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
        metrics["pred_loss"].append(outputs.pred_loss.detach().float().item())
        metrics["reg_loss"].append(outputs.reg_loss.detach().float().item())
        if mode == "eval":
            mask = inputs.get("action_mask")
            latents = outputs.latents.detach()
            targets = outputs.targets.detach()
            pred_mse = prediction_loss(outputs.predictions.detach(), targets, mask, "mse")
            copy_mse = prediction_loss(latents[:, :-1], targets, mask, "mse")
            metrics["pred_mse"].append(pred_mse.float().item())
            metrics["copy_mse"].append(copy_mse.float().item())
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
        mode = "train" if "loss" in logs else "eval" if "eval_loss" in logs else None
        if mode is not None:
            prefix = "eval_" if mode == "eval" else ""
            for key, values in self._metrics[mode].items():
                if values:
                    logs[f"{prefix}{key}"] = sum(values) / len(values)
            self._metrics[mode].clear()
        if mode == "train":
            logs.update(self.wsd_callback.extra_logs())
        super().log(logs, start_time)
