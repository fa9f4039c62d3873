"""Trainer callbacks that the Ray tests hand to `train_on_ray`, run inside the Ray workers (which
import this module by name: the tests put `tests/` on the workers' `PYTHONPATH`).

- `StepLog`: each rank appends `<pid> <step>` to a file per rank at every optimizer step, so a
  test sees which steps each worker process trained;
- `KillAfterCheckpoint`: one rank SIGKILLs itself once, in the step after a given checkpoint
  was reported (a lost worker);
- `PerRankSigreg`: SIGReg reduced over each rank alone (the control run, with per-rank
  BatchNorm through `sync_batchnorm: false`).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback


def phase_of(args) -> str:
    """The phase a trainer runs (its output dir's name)."""
    return Path(args.output_dir).name


class StepLog(TrainerCallback):
    """Appends `<pid> <global step>` to `folder/steps_<phase>_rank<r>.txt` at every step end."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_step_end(self, args, state, control, **kwargs):
        path = Path(self.folder) / f"steps_{phase_of(args)}_rank{args.process_index}.txt"
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {state.global_step}\n")


class KillAfterCheckpoint(TrainerCallback):
    """Rank `rank` SIGKILLs its own process at the end of step `step + 1` of phase `phase`, once
    (a marker file in `folder` records it), after a pause that lets Ray register the checkpoint
    of step `step`."""

    def __init__(self, folder: str, phase: str, step: int, rank: int = 1, pause_s: float = 1.0):
        self.folder, self.phase, self.step = folder, phase, step
        self.rank, self.pause_s = rank, pause_s

    def on_step_end(self, args, state, control, **kwargs):
        marker = Path(self.folder) / "killed.txt"
        if args.process_index != self.rank or phase_of(args) != self.phase:
            return
        if state.global_step != self.step + 1:
            return
        if marker.exists():
            return
        marker.write_text(f"{os.getpid()} {state.global_step}\n")
        time.sleep(self.pause_s)
        os.kill(os.getpid(), signal.SIGKILL)


class PerRankSigreg(TrainerCallback):
    """SIGReg over each rank's own batch (a one-rank process group) while phase `phase` trains."""

    def __init__(self, phase: str):
        self.phase = phase
        self.original = None

    def on_train_begin(self, args, state, control, **kwargs):
        import lewm_hf.modeling_lewm as modeling

        if phase_of(args) != self.phase:
            return
        world, rank = dist.get_world_size(), dist.get_rank()
        groups = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
        self.original = modeling.sigreg
        modeling.sigreg = functools.partial(self.original, process_group=groups[rank])

    def on_train_end(self, args, state, control, **kwargs):
        import lewm_hf.modeling_lewm as modeling

        if self.original is not None:
            modeling.sigreg, self.original = self.original, None
