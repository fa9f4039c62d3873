"""Run a recipe on a Ray cluster: Ray Train's `TorchTrainer`, the phase runner in every worker.

Each Ray Train worker runs the same phase runner as `accelerate launch` does in each process
(`lewm_hf.tasks.runner.run_recipe`); Ray starts the workers, sets up the process group (gloo on
CPU workers, NCCL on GPU workers) and the rank variables the HF Trainer reads, so the run is
data-parallel exactly as under `accelerate launch` (global BatchNorm and SIGReg included). The
launcher's hooks (`RayPhaseHooks`) add two things to every phase's trainer:

- `ray.train.huggingface.transformers.prepare_trainer`;
- `LeWMRayReportCallback`, a `RayTrainReportCallback` that reports each checkpoint the Trainer
  saves (`checkpoint-<step>`, safetensors weights, optimizer, RNG and trainer state: the same
  folder) to Ray Train, with the phase it belongs to and the summaries of the phases before it.

When a worker dies and Ray restarts the worker group (`FailureConfig(max_failures=N)`), the
runner skips the phases that had finished and resumes the interrupted one from the last
checkpoint reported to Ray (`ray.train.get_checkpoint()`), without a flag.

Every worker reads and writes the recipe's `output_dir` (the data caches, the phases' models): on
a cluster of several machines it must be on a shared filesystem, as for any multi-node run.
Requires the `ray` extra: `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .. import metric_keys as K
from ..errors import LeWMConfigError
from ..recipe import load_recipe
from ..reporting import console, write_json
from .base import PhaseContext, PhaseHooks, RestoredRun
from .runner import run_root, validate_recipe

# The run's state, next to the HF checkpoint folder in each checkpoint reported to Ray.
RAY_STATE_FILE = "lewm_run.json"
# Inside a Ray checkpoint, the HF checkpoint folder (`RayTrainReportCallback.CHECKPOINT_NAME`).
RAY_CHECKPOINT_FOLDER = "checkpoint"
# The metric naming the phase of each reported checkpoint.
PHASE_METRIC = "lewm_phase"
# The local temporary copy of the checkpoint a restarted worker resumes from.
RESTORE_PREFIX = "lewm-ray-restore-"


def _require_ray() -> None:
    try:
        import ray.train  # noqa: F401
    except ImportError as err:  # pragma: no cover - the test suite installs the extra
        raise ImportError(
            'Ray Train is not installed: pip install -e ".[ray]" (ray[train] 2.60)'
        ) from err


def _report_callback_class() -> type:
    """`LeWMRayReportCallback`, defined on first use (Ray is an optional dependency)."""
    global _REPORT_CALLBACK
    if _REPORT_CALLBACK is not None:
        return _REPORT_CALLBACK
    _require_ray()
    import ray.train
    import torch.distributed as dist
    from ray.train.huggingface.transformers import RayTrainReportCallback

    class LeWMRayReportCallback(RayTrainReportCallback):
        """`RayTrainReportCallback` that reports the checkpoint just saved, with the run's state.

        Ray's callback copies the output dir's last checkpoint on every rank; this one waits
        until every rank has written its files of `checkpoint-<step>` (a barrier), then rank 0
        reports the whole folder and every other rank its own files (`rng_state_<rank>.pth`),
        which Ray merges into one checkpoint: on machines without a shared filesystem each
        rank's RNG state is there too. Rank 0 adds `lewm_run.json`: the phase, its step, and
        the summaries of the phases before it.

        Args:
            phase (`str`): The phase name.
            index (`int`): The phase index.
            finished (`dict[str, dict]`): The summaries of the phases before it.
        """

        def __init__(self, phase: str, index: int, finished: dict[str, dict[str, Any]]):
            super().__init__()
            self.phase = phase
            self.index = index
            self.finished = finished

        def on_save(self, args, state, control, **kwargs):
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            metrics: dict[str, Any] = {}
            for log in state.log_history:
                metrics.update(log)
            metrics[PHASE_METRIC] = self.phase
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / RAY_CHECKPOINT_FOLDER
                if args.process_index == 0:
                    shutil.copytree(source, target)
                    run_state = {
                        "phase": self.phase,
                        "index": self.index,
                        "global_step": state.global_step,
                        "finished": self.finished,
                    }
                    (Path(tmp) / RAY_STATE_FILE).write_text(json.dumps(run_state, default=str))
                else:
                    target.mkdir()
                    suffix = f"_{args.process_index}.pth"
                    for path in source.glob(f"*{suffix}"):
                        shutil.copy2(path, target / path.name)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"{self.index}-{self.phase}-checkpoint-{state.global_step}",
                )

    _REPORT_CALLBACK = LeWMRayReportCallback
    return _REPORT_CALLBACK


_REPORT_CALLBACK: type | None = None


class RayPhaseHooks(PhaseHooks):
    """The phase runner's hooks inside a Ray Train worker.

    Args:
        callbacks (`Sequence[TrainerCallback]`, *optional*): More callbacks for every phase's
            trainer (each phase gets a copy).
    """

    def __init__(self, callbacks: Sequence[TrainerCallback] = ()):
        self.callbacks = list(callbacks)
        self.finished: dict[str, dict[str, Any]] = {}
        self.restored: dict[str, Any] | None = None
        self.restore_dir: Path | None = None

    def restore(self) -> RestoredRun | None:
        """The last checkpoint reported to Ray (after a restart), copied to a local temporary
        folder (`restore_dir`) that lives until the phase it resumes has finished, or until
        `release` (the worker calls it however its run ends)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        local = Path(tempfile.mkdtemp(prefix=RESTORE_PREFIX))
        self.restore_dir = local
        checkpoint.to_directory(str(local))
        state = json.loads((local / RAY_STATE_FILE).read_text())
        folder = str(local / RAY_CHECKPOINT_FOLDER)
        self.restored = {
            "phase": state["phase"],
            "global_step": state["global_step"],
            "checkpoint": checkpoint.path,
            "local_copy": str(local),  # removed once the phase has finished
        }
        console(
            f"[ray] restarting at phase {state['phase']!r}, step {state['global_step']} "
            f"(checkpoint {checkpoint.path})"
        )
        return RestoredRun(finished=state["finished"], phase=state["phase"], checkpoint=folder)

    def prepare_trainer(self, trainer: Any, context: PhaseContext) -> Any:
        from ray.train.huggingface.transformers import prepare_trainer

        trainer = prepare_trainer(trainer)
        callback = _report_callback_class()(context.name, context.index, dict(self.finished))
        trainer.add_callback(callback)
        for extra in self.callbacks:
            trainer.add_callback(copy.deepcopy(extra))
        return trainer

    def phase_finished(self, context: PhaseContext, summary: dict[str, Any]) -> None:
        self.finished[context.name] = summary
        if self.restored is not None and context.name == self.restored["phase"]:
            self.release()  # the Trainer read the checkpoint when the phase's training began

    def release(self) -> None:
        """Remove the local copy of the restored checkpoint, if any (idempotent)."""
        if self.restore_dir is not None:
            shutil.rmtree(self.restore_dir, ignore_errors=True)
            self.restore_dir = None


def _train_loop_per_worker(spec: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the phase runner with `RayPhaseHooks`; rank 0 then adds
    where the run restarted (`ray.restored`) to the run's `summary.json`."""
    import ray.train

    from .runner import run_recipe

    if spec.get("cwd") and Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])  # relative recipe paths mean what they mean to the driver
    if not spec.get("use_gpu"):
        # CPU workers: the Trainer's accelerate state is then MULTI_CPU over Ray's gloo group
        # (without it, a GPU-less worker would train alone, as `ParallelMode.NOT_DISTRIBUTED`).
        os.environ["ACCELERATE_USE_CPU"] = "true"
    hooks = RayPhaseHooks(spec.get("callbacks", ()))
    try:
        summary = run_recipe(spec["config"], spec["overrides"], hooks=hooks)
    finally:
        hooks.release()  # a run that failed in the restored phase leaves no copy behind
    if ray.train.get_context().get_world_rank() == 0:
        summary["ray"] = {"restored": hooks.restored}
        write_json(Path(summary["output_dir"]) / K.SUMMARY_FILE, summary)


def worker_runtime_env(extra_paths: Sequence[str | Path] = ()) -> dict[str, Any]:
    """A Ray `runtime_env` under which workers import this `lewm_hf` (its folder's parent first
    on `PYTHONPATH`) and start no tokenizer threads (Ray itself sets `OMP_NUM_THREADS` to the
    worker's CPUs).

    Args:
        extra_paths (`Sequence[str | Path]`, *optional*): More folders for `PYTHONPATH`.

    Returns:
        `dict[str, Any]`: The runtime env (for `ray.init(runtime_env=...)`).
    """
    root = Path(__file__).resolve().parents[2]
    paths = [str(root), *(str(p) for p in extra_paths)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "TOKENIZERS_PARALLELISM": "false"}}


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Connect to a Ray cluster (`address`), or start a local one, with `worker_runtime_env`.

    Does nothing when Ray is already initialised in this process.

    Args:
        address (`str`, *optional*): The cluster (`auto`, `ray://host:10001`); None starts a
            local cluster (or joins `RAY_ADDRESS`).
        **kwargs: More `ray.init` arguments (`num_cpus`, ...).
    """
    _require_ray()
    import ray

    if ray.is_initialized():
        return
    runtime_env = kwargs.pop("runtime_env", None) or worker_runtime_env()
    ray.init(address=address, runtime_env=runtime_env, **kwargs)


def train_on_ray(
    config: str | Path,
    overrides: list[tuple[str, Any]] | None = None,
    *,
    num_workers: int = 2,
    use_gpu: bool = False,
    resources_per_worker: dict[str, float] | None = None,
    storage_path: str | Path | None = None,
    name: str | None = None,
    max_failures: int = 0,
    callbacks: Sequence[TrainerCallback] = (),
    address: str | None = None,
) -> dict[str, Any]:
    """Run a recipe with Ray Train: `num_workers` data-parallel workers, each running every phase.

    Every key is validated here, before Ray starts anything. Each worker trains at the recipe's
    `per_device_train_batch_size`: `num_workers` workers at batch `b` train like one process at
    batch `num_workers * b`.

    Args:
        config (`str` or `Path`): The recipe YAML.
        overrides (`list[tuple[str, Any]]`, *optional*): Command-line overrides.
        num_workers (`int`, defaults to 2): Ray Train workers (processes).
        use_gpu (`bool`, defaults to False): One GPU per worker (NCCL) instead of CPU (gloo).
        resources_per_worker (`dict[str, float]`, *optional*): Ray resources of each worker
            (default: 1 CPU, and 1 GPU with `use_gpu`).
        storage_path (`str` or `Path`, *optional*): Where Ray keeps the reported checkpoints
            (a shared path or `s3://...` on a cluster); default `<output_dir>/ray`.
        name (`str`, *optional*): The Ray run's name (default: the recipe file's stem).
        max_failures (`int`, defaults to 0): Restarts of the worker group after a worker
            failure, each from the last reported checkpoint (-1: unlimited).
        callbacks (`Sequence[TrainerCallback]`, *optional*): More callbacks for every phase's
            trainer, in every worker (they must pickle).
        address (`str`, *optional*): The Ray cluster (see `init_ray`); ignored when Ray is
            already initialised.

    Returns:
        `dict[str, Any]`: The run's summary (as `run_recipe`'s), with `ray`: the Ray run's
        `storage_path`, its last `checkpoint` and where it restarted (`restored`, or None).

    Raises:
        `LeWMConfigError`: for a bad recipe key or `num_workers < 1`.
    """
    if not isinstance(num_workers, int) or num_workers < 1:
        raise LeWMConfigError("num_workers", num_workers, "an int >= 1")
    _require_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = Path(config).resolve()
    overrides = list(overrides or [])
    validate_recipe(config, overrides)
    root = run_root(load_recipe(config, overrides))
    if not root.is_absolute():
        root = root.resolve()
        overrides.append(("output_dir", str(root)))
    storage = Path(storage_path) if storage_path else root / "ray"
    if "://" not in str(storage):
        storage = storage.resolve()
        storage.mkdir(parents=True, exist_ok=True)
    init_ray(address)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "config": str(config),
            "overrides": overrides,
            "cwd": os.getcwd(),
            "use_gpu": use_gpu,
            "callbacks": list(callbacks),
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker
        ),
        run_config=RunConfig(
            name=name or config.stem,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    summary = json.loads((root / K.SUMMARY_FILE).read_text())
    summary["ray"] = {
        **summary.get("ray", {}),
        "storage_path": str(storage),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
    }
    return summary


__all__ = [
    "RAY_CHECKPOINT_FOLDER",
    "RAY_STATE_FILE",
    "RESTORE_PREFIX",
    "RayPhaseHooks",
    "init_ray",
    "train_on_ray",
    "worker_runtime_env",
]
