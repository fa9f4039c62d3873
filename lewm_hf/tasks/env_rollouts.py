"""Task `env_rollouts`: write a trajectory dataset of an environment under a random policy.

The data step of a recipe that trains on an environment (`recipes/configs/taxi_lewm.yaml`):
it rolls out a uniformly random policy in a registered environment
(`lewm_hf.data.environments`), writes `train.parquet`, `validation.parquet` and
`lewm_dataset.json` into the phase's output folder, and a later world-model phase reads that
folder with `dataset_name`. The same keys and seed write the same files; nothing trains here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.environments import EnvironmentRolloutConfig, write_environment_dataset
from .base import PhaseContext

TARGETS = {"rollouts": EnvironmentRolloutConfig}
OWNERS: dict[str, str] = {}


@dataclass
class RolloutTaskArguments:
    """The parsed arguments of an `env_rollouts` phase.

    Args:
        rollouts (`EnvironmentRolloutConfig`): The environment, episodes, row length and seed.
        output_dir (`Path`): Where the dataset is written.
    """

    rollouts: EnvironmentRolloutConfig
    output_dir: Path


def parse(parts: dict[str, dict[str, Any]], output_dir: Path, source: str) -> RolloutTaskArguments:
    """Build (and so validate) the phase's arguments."""
    return RolloutTaskArguments(EnvironmentRolloutConfig(**parts["rollouts"]), output_dir)


def main(args: RolloutTaskArguments, context: PhaseContext) -> dict[str, Any]:
    """Write the dataset; returns the phase summary (`dataset_path`, row counts, distinct
    states, wall time)."""
    start = time.time()
    summary = write_environment_dataset(args.rollouts, args.output_dir)
    summary = {"task": "env_rollouts", "output_dir": str(args.output_dir), **summary}
    summary["model_path"] = None
    summary["wall_time_s"] = time.time() - start
    return summary


__all__ = ["OWNERS", "TARGETS", "RolloutTaskArguments", "main", "parse"]
