"""`recipes/train.py` under torchrun, with a record of the steps each attempt ran, and (with
`LEWM_TEST_KILL_PHASE=<phase>`) rank 1 killed by SIGKILL right after the first checkpoint of that
phase in the launch's first attempt.

Usage: torchrun ... elastic_recipe.py <record dir> --config <recipe> [recipe flags]

Writes `<record dir>/attempt<restart>_rank<rank>_<phase>.json`: the global step at which the
phase's training began (after any resume) and the steps it ran.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes"))

import train  # noqa: E402  (recipes/train.py)

RECORDS = Path(sys.argv[1])
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
RANK = int(os.environ.get("RANK", "0"))
KILL_PHASE = os.environ.get("LEWM_TEST_KILL_PHASE")


class StepRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.begin: int | None = None
        self.steps: list[int] = []
        self.killed = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        phase = Path(args.output_dir).name
        if ATTEMPT == 0 and phase == KILL_PHASE and not self.killed:
            self.killed = True
            dist.barrier()  # every rank has finished the checkpoint on disk
            if RANK == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, args, state, control, **kwargs):
        phase = Path(args.output_dir).name
        record = {"begin": self.begin, "steps": self.steps}
        RECORDS.mkdir(parents=True, exist_ok=True)
        (RECORDS / f"attempt{ATTEMPT}_rank{RANK}_{phase}.json").write_text(json.dumps(record))


_init = Trainer.__init__


def _init_with_recorder(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.add_callback(StepRecorder())


Trainer.__init__ = _init_with_recorder  # every phase's trainer (the LM's and the world model's)
torch.set_num_threads(1)
sys.exit(train.main(sys.argv[2:]))
