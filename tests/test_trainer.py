"""LeWMTrainer end to end on tiny models: logging, parameters, accumulation, schedule, resume,
collapse monitor, best-model selection."""

from __future__ import annotations

import copy
import math
import traceback

import numpy as np
import pytest
import torch
from _builders import ACTIONS, W
from safetensors.torch import load_file
from transformers import TrainerCallback

from lewm_hf import LeWMModel, LeWMTrainer
from lewm_hf import metric_keys as K
from lewm_hf.errors import LeWMConfigError, LeWMInputError, LeWMNonFiniteLossError
from lewm_hf.trainer.schedules import wsd_lr_multiplier


def test_trains_logs_components_and_updates_every_trainable_parameter(
    tiny_lewm_model, tiny_clips, tiny_training_args
):
    # A weight that is no default anywhere: the trainer must use the config's value as is.
    model = tiny_lewm_model(encoder_mode="frozen", reg_weight=0.37)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = LeWMTrainer(model, tiny_training_args(), train_dataset=tiny_clips(), window=W)
    trainer.train()
    assert model.config.reg_weight == 0.37
    logs = [e for e in trainer.state.log_history if K.LOSS in e]
    assert len(logs) == 8
    for key in (K.LOSS, K.PRED_LOSS, K.REG_LOSS, K.LR_MULTIPLIER, "learning_rate"):
        assert all(np.isfinite(e[key]) for e in logs), key
    # phase2: loss = pred + 0.37 * reg (averaged over the same window)
    for e in logs:
        assert e[K.LOSS] == pytest.approx(e[K.PRED_LOSS] + 0.37 * e[K.REG_LOSS], rel=1e-4)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name.startswith("encoder."):
            assert not changed, f"frozen {name} changed"
        elif param.requires_grad:
            # AdaLN modulation starts at zero and gets a gradient only through the gates.
            assert changed, f"trainable {name} did not change"


def test_wsd_schedule_applied_at_every_step(tiny_lewm_model, tiny_clips, tiny_training_args):
    args = tiny_training_args(max_steps=20, warmup_steps=4, learning_rate=1e-2)
    trainer = LeWMTrainer(tiny_lewm_model(), args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    logs = [e for e in trainer.state.log_history if K.LOSS in e]
    for e in logs:
        # The logged lr is the one the step used.
        step = e["step"]
        assert e["learning_rate"] == pytest.approx(1e-2 * wsd_lr_multiplier(step, 20, 4))
        assert e[K.LR_MULTIPLIER] == pytest.approx(wsd_lr_multiplier(step, 20, 4))


def test_per_group_learning_rates_keep_ratios(tiny_lewm_model, tiny_clips, tiny_training_args):
    args = tiny_training_args(
        max_steps=6, predictor_lr_multiplier=2.0, action_encoder_lr_multiplier=0.5
    )
    trainer = LeWMTrainer(tiny_lewm_model(), args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    lrs = {}
    for group in trainer.optimizer.param_groups:
        names = {n for n, p in trainer.model.named_parameters() for q in group["params"] if p is q}
        for name in names:  # a group may hold several parts that share a learning rate
            lrs.setdefault(name.split(".")[0], set()).add(group["lr"])
        # No weight decay on biases, norms and embeddings.
        if group["weight_decay"] > 0:
            assert not any("bias" in n or "norm" in n or "embed" in n for n in names)
    assert all(len(values) == 1 for values in lrs.values()), lrs  # one rate per part
    base = lrs["encoder"].pop()
    assert lrs["predictor"].pop() == pytest.approx(2.0 * base)
    assert lrs["action_encoder"].pop() == pytest.approx(0.5 * base)


class RecordingTrainer(LeWMTrainer):
    """Keeps a copy of every training micro-batch `compute_loss` sees."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.batches.append(copy.deepcopy(inputs))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_gradient_accumulation_keeps_loss_scale(tiny_lewm_model, tiny_clips, tiny_training_args):
    # One SGD step over 4 micro-batches of 4: the logged loss must be the mean of the four
    # micro-batch losses and the update must be -lr x the gradient of that mean (a loss summed
    # over micro-batches, or divided twice, is 4x off in both). SGD without clipping keeps the
    # update proportional to the gradient, which Adam's first step is not.
    lr = 0.05
    args = tiny_training_args(
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        learning_rate=lr,
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,
        warmup_steps=0,
        lr_schedule="constant",
    )
    trainer = RecordingTrainer(
        tiny_lewm_model(dropout=0.0), args, train_dataset=tiny_clips(16), window=W
    )
    trainer.train()
    assert len(trainer.batches) == 4
    reference = tiny_lewm_model(dropout=0.0)
    reference.train()
    losses = [reference(**batch, step=0).loss / 4 for batch in trainer.batches]
    total = torch.stack(losses).sum()
    total.backward()
    logged = trainer.state.log_history[0][K.LOSS]
    assert logged == pytest.approx(total.item(), rel=1e-5)
    for (name, param), trained in zip(
        reference.named_parameters(), trainer.model.parameters(), strict=True
    ):
        if param.grad is None:
            continue
        torch.testing.assert_close(trained.detach(), param.detach() - lr * param.grad, msg=name)


def test_remove_unused_columns_keeps_action_fields(tiny_lewm_model, tiny_clips, tiny_training_args):
    args = tiny_training_args(max_steps=2, remove_unused_columns=True)
    trainer = LeWMTrainer(tiny_lewm_model(), args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    assert trainer.state.global_step == 2


def test_eval_metrics_and_best_model_on_custom_metric(
    tiny_lewm_model, tiny_clips, tiny_training_args
):
    args = tiny_training_args(
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model=K.EVAL_PRED_MSE,
        greater_is_better=False,
    )
    trainer = LeWMTrainer(
        tiny_lewm_model(),
        args,
        train_dataset=tiny_clips(),
        eval_dataset=tiny_clips(32, seed=1),
        window=W,
    )
    trainer.train()
    evals = [e for e in trainer.state.log_history if K.EVAL_PRED_MSE in e]
    assert len(evals) == 3
    for e in evals:
        for key in (K.EVAL_LOSS, K.EVAL_PRED_LOSS, K.EVAL_REG_LOSS, K.EVAL_COPY_MSE):
            assert np.isfinite(e[key])
    best = min(evals, key=lambda e: e[K.EVAL_PRED_MSE])
    assert trainer.state.best_metric == pytest.approx(best[K.EVAL_PRED_MSE])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")


def _final_weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / K.SAFE_WEIGHTS_FILE))


def test_resume_mid_run_same_schedule_and_weights(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    common = dict(max_steps=8, warmup_steps=2, save_strategy="steps", save_steps=4)
    full = LeWMTrainer(
        tiny_lewm_model(),
        tiny_training_args(tmp_path / "full" / "out", **common),
        train_dataset=tiny_clips(),
        window=W,
    )
    full.train()
    full.save_model()

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    first = LeWMTrainer(
        tiny_lewm_model(),
        tiny_training_args(tmp_path / "resumed" / "out", **common),
        train_dataset=tiny_clips(),
        window=W,
        callbacks=[Interrupt()],
    )
    first.train()
    assert first.state.global_step == 4
    second = LeWMTrainer(
        tiny_lewm_model(seed=123),  # different init: the checkpoint must restore everything
        tiny_training_args(tmp_path / "resumed" / "out", **common),
        train_dataset=tiny_clips(),
        window=W,
    )
    second.train(resume_from_checkpoint=True)
    second.save_model()
    a = _final_weights(tmp_path / "full" / "out")
    b = _final_weights(tmp_path / "resumed" / "out")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    lr_full = [e["learning_rate"] for e in full.state.log_history if K.LOSS in e]
    lr_resumed = [e["learning_rate"] for e in second.state.log_history if K.LOSS in e]
    assert lr_full == lr_resumed


def test_collapse_monitor_alerts_without_regulariser(
    tiny_lewm_model, tiny_clips, tiny_training_args
):
    args = tiny_training_args(
        max_steps=60,
        learning_rate=1e-2,
        warmup_steps=0,
        collapse_monitor_steps=10,
        lr_schedule="constant",
    )
    model = tiny_lewm_model(regularizer="none")
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(256), window=W)
    trainer.train()
    alerts = trainer.collapse_monitor.alerts
    assert alerts, "a collapsing run raised no alert"
    assert {"target_var", "pairwise_distance"} <= set(alerts[-1]["alerts"])
    logged = [e for e in trainer.state.log_history if "collapse/effective_rank" in e]
    assert len(logged) == 6


def test_collapse_monitor_quiet_on_healthy_run(tiny_lewm_model, tiny_clips, tiny_training_args):
    args = tiny_training_args(
        max_steps=60,
        learning_rate=1e-3,
        collapse_monitor_steps=10,
    )
    model = tiny_lewm_model(regularizer="sigreg", reg_weight=1.0)
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(256), window=W)
    trainer.train()
    assert trainer.collapse_monitor.alerts == []


def test_collapse_action_stop(tiny_lewm_model, tiny_clips, tiny_training_args):
    args = tiny_training_args(
        max_steps=60,
        learning_rate=1e-2,
        collapse_monitor_steps=10,
        collapse_action="stop",
        lr_schedule="constant",
        warmup_steps=0,
    )
    model = tiny_lewm_model(regularizer="none")
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(256), window=W)
    trainer.train()
    assert trainer.state.global_step < 60
    assert trainer.collapse_monitor.result(trainer.state)["collapse_stopped"]


def test_bad_arguments_are_typed_errors(tiny_training_args):
    from lewm_hf.errors import LeWMConfigError

    for field, value in [
        ("lr_schedule", "linear"),
        ("collapse_action", "panic"),
        ("collapse_var_ratio", 1.5),
        ("collapse_kl_per_dim_max", 0.0),
        ("encoder_lr_multiplier", -1.0),
    ]:
        with pytest.raises(LeWMConfigError, match=field):
            tiny_training_args(**{field: value})


def test_final_metrics_reuse_the_evaluation_at_the_final_step(
    monkeypatch, tiny_lewm_model, tiny_clips, tiny_training_args
):
    data = tiny_clips(64)
    args = tiny_training_args(max_steps=4, eval_strategy="steps", eval_steps=2)
    trainer = LeWMTrainer(tiny_lewm_model(), args, train_dataset=data, eval_dataset=data, window=W)
    trainer.train()
    logged = [e for e in trainer.state.log_history if K.EVAL_PRED_MSE in e][-1]
    assert logged["step"] == 4

    def forbidden(*a, **k):
        raise AssertionError("evaluated the same weights twice")

    monkeypatch.setattr(trainer, "evaluate", forbidden)
    assert trainer.final_metrics() is logged


def test_final_metrics_evaluate_the_reloaded_best_model(
    tiny_lewm_model, tiny_clips, tiny_training_args
):
    # With `load_best_model_at_end` the final weights are not those of the last evaluation.
    data = tiny_clips(64)
    args = tiny_training_args(
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model=K.EVAL_COPY_MSE,
        greater_is_better=True,
    )
    trainer = LeWMTrainer(tiny_lewm_model(), args, train_dataset=data, eval_dataset=data, window=W)
    trainer.train()
    evals = [e for e in trainer.state.log_history if K.EVAL_PRED_MSE in e]
    assert [e["step"] for e in evals] == [2, 4]
    best = max(evals, key=lambda e: e[K.EVAL_COPY_MSE])
    fresh = trainer.final_metrics()
    assert len([e for e in trainer.state.log_history if K.EVAL_PRED_MSE in e]) == 3
    assert fresh[K.EVAL_PRED_MSE] == pytest.approx(best[K.EVAL_PRED_MSE], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# No host synchronisation per step

# Tensor methods that make the host wait for the device (on an accelerator) to read a value.
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class _StepWindow(TrainerCallback):
    """Open from the beginning to the end of every optimizer step after the first (the first
    builds the optimizer state), closed in between, where the Trainer logs and saves."""

    def __init__(self):
        self.open = False
        self.steps = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.open = state.global_step >= 1

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += self.open
        self.open = False


def count_host_reads(monkeypatch, window: _StepWindow) -> list[str]:
    """Record every `HOST_READS` call on any tensor while `window` is open: forward, loss,
    metrics, non-finite check, backward, clipping, optimizer step and the callbacks' step ends
    (the data loader, which the checks of `HostCheckedCollator` run in, is outside)."""
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _original=original, _name=name, **kwargs):
            if window.open:
                caller = traceback.extract_stack(limit=2)[0]  # the frame that called `_name`
                calls.append(f"{_name} at {caller.filename}:{caller.lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    return calls


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "sgd"])
def test_a_step_that_does_not_log_never_synchronises_the_host(
    monkeypatch, optim, tiny_lewm_model, tiny_clips, tiny_training_args
):
    """Metrics stay on the device until a log reads them, the non-finite check skips a step on
    the device (the fused optimizer's `found_inf`), the action ids are checked on the host
    batch; the collapse monitor is on but not due. The control: an optimizer that cannot skip
    on the device (SGD, not fused) makes the check read its flag once per step, and the same
    counter sees exactly that."""
    window = _StepWindow()
    args = tiny_training_args(max_steps=5, logging_steps=1000, optim=optim)
    args.collapse_monitor_steps = 1000
    trainer = LeWMTrainer(
        tiny_lewm_model(), args, train_dataset=tiny_clips(128), window=W, callbacks=[window]
    )
    calls = count_host_reads(monkeypatch, window)
    trainer.train()
    assert window.steps == 4
    if optim == "adamw_torch_fused":
        assert calls == []
    else:
        assert len(calls) == 4 and all("lewm_trainer.py" in c for c in calls), calls


def test_action_ids_are_checked_on_the_host_batch(tiny_lewm_model, tiny_clips, tiny_training_args):
    """The model skips its value checks under the trainer (`check_values=False`), so the
    trainer's collator must raise the typed error the forward would have."""
    data = tiny_clips(64)
    actions = [list(row) for row in data["actions"]]
    actions[5] = [ACTIONS, 0, 0]  # one id past the action vocabulary
    data = data.remove_columns("actions").add_column("actions", actions)
    trainer = LeWMTrainer(tiny_lewm_model(), tiny_training_args(), train_dataset=data, window=W)
    with pytest.raises(LeWMInputError) as info:
        trainer.train()
    assert info.value.field == "actions.ids"


class _Weights(TrainerCallback):
    def __init__(self, model):
        self.model = model
        self.after: dict[int, list[torch.Tensor]] = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.after[state.global_step] = [p.detach().clone() for p in self.model.parameters()]

    def same(self, a: int, b: int) -> bool:
        return all(torch.equal(x, y) for x, y in zip(self.after[a], self.after[b]))


def poison_steps(trainer: LeWMTrainer, model: LeWMModel, first: int, last: int | None = None):
    """Make the training loss NaN at optimizer steps `first..last` (1-indexed)."""

    def hook(module, inputs, output):
        step = trainer.state.global_step + 1
        if module.training and step >= first and (last is None or step <= last):
            output.loss = output.loss * math.nan
        return output

    model.register_forward_hook(hook)


def test_a_nonfinite_step_is_skipped_on_the_device(tiny_lewm_model, tiny_clips, tiny_training_args):
    """Fused AdamW (the default): step 3's NaN loss leaves the weights, the optimizer state and
    the running statistics as step 2 left them; it is counted at the next log, and the logged
    loss and metrics of its window leave it out."""
    model = tiny_lewm_model()
    trainer = LeWMTrainer(
        model, tiny_training_args(max_steps=5), train_dataset=tiny_clips(128), window=W
    )
    weights = _Weights(model)
    trainer.add_callback(weights)
    poison_steps(trainer, model, 3, 3)
    trainer.train()
    assert weights.same(2, 3) and not weights.same(3, 4)
    assert trainer.nonfinite_guard.skipped_steps == [3]
    logs = [e for e in trainer.state.log_history if K.LOSS in e]
    assert [e[K.NONFINITE_STEPS] for e in logs] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert all(math.isfinite(e[K.LOSS]) for e in logs)
    assert K.PRED_LOSS not in logs[2] and all(K.PRED_LOSS in e for e in logs[:2] + logs[3:])
    assert all(torch.isfinite(b).all() for b in model.buffers())
    steps = {s["step"].item() for s in trainer.optimizer.optimizer.state.values()}
    assert steps == {4.0}  # 5 steps, one skipped


def test_consecutive_nonfinite_steps_on_the_device_stop_before_the_next_checkpoint(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    """Counted at each checkpoint (no log is due): steps 3 and 4 at checkpoint-4, then 5 and 6
    at step 6, where the third in a row raises before checkpoint-6 is written."""
    model = tiny_lewm_model()
    args = tiny_training_args(
        max_steps=10,
        logging_steps=1000,
        save_strategy="steps",
        save_steps=2,
        max_nonfinite_steps=3,
    )
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(128), window=W)
    poison_steps(trainer, model, 3)
    with pytest.raises(LeWMNonFiniteLossError, match="max_nonfinite_steps=3"):
        trainer.train()
    assert trainer.nonfinite_guard.skipped_steps == [3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    saved = [
        load_file(str(tmp_path / "out" / c / K.SAFE_WEIGHTS_FILE))
        for c in ("checkpoint-2", "checkpoint-4")
    ]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])


# ---------------------------------------------------------------------------------------------
# torch_compile

# Measured: loss curves within 2.1e-6 relative and weights within 3.1e-5 of eager over 6 SGD
# steps (inductor reorders float32 sums). SGD, as in the distributed parity tests: AdamW turns
# the rounding-level gradients of the biases before a BatchNorm into lr-sized steps.
COMPILE_LOSS_RTOL = 1e-4
COMPILE_WEIGHT_ATOL = 1e-4


@pytest.mark.slow  # inductor compiles for about 15 s with a warm cache, minutes without one;
# benchmarks/torch_compile.py measures the same option on the default world model.
def test_torch_compile_matches_eager_within_tolerance(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    runs = {}
    for compiled in (False, True):
        model = tiny_lewm_model()
        args = tiny_training_args(
            tmp_path / str(compiled) / "out",
            max_steps=6,
            torch_compile=compiled,
            optim="sgd",
            learning_rate=0.05,
            lr_schedule="constant",
            warmup_steps=0,
        )
        trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(256), window=W)
        trainer.train()
        losses = [e[K.LOSS] for e in trainer.state.log_history if K.LOSS in e]
        runs[compiled] = (losses, model.state_dict())
    (eager, eager_weights), (compiled, compiled_weights) = runs[False], runs[True]
    assert len(compiled) == 6
    assert compiled == pytest.approx(eager, rel=COMPILE_LOSS_RTOL)
    for key, value in eager_weights.items():
        torch.testing.assert_close(
            compiled_weights[key], value, rtol=0, atol=COMPILE_WEIGHT_ATOL, msg=key
        )


def test_torch_compile_without_a_cxx_compiler_is_a_typed_error(
    monkeypatch, tiny_lewm_model, tiny_clips, tiny_training_args
):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    args = tiny_training_args(torch_compile=True)
    with pytest.raises(LeWMConfigError) as info:
        LeWMTrainer(tiny_lewm_model(), args, train_dataset=tiny_clips(16), window=W)
    assert info.value.field == "torch_compile" and "no-such-c++-compiler" in str(info.value)
