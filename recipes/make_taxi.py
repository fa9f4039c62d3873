"""Write a Taxi-v4 trajectory dataset: `python recipes/make_taxi.py --output data/taxi`.

Rolls out a uniformly random policy in Gymnasium's `Taxi-v4` (`pip install -e ".[gym]"`) and
writes `train.parquet`, `validation.parquet` and `lewm_dataset.json` in the trajectory format:
each row holds `K + 1` states of 4 tokens (taxi row, taxi column, passenger location,
destination) and the `K` actions between them. The same flags write the same files. A world
model then trains from the folder with `dataset_name: <folder>`;
`recipes/configs/taxi_lewm.yaml` runs this same step itself (task `env_rollouts`) before
training, so the recipe alone needs no prepared data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lewm_hf.data.environments import EnvironmentRolloutConfig, write_environment_dataset
from lewm_hf.errors import LeWMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="Folder the dataset is written to.")
    for field in dataclasses.fields(EnvironmentRolloutConfig):
        parser.add_argument(
            f"--{field.name}",
            type=type(field.default),
            default=field.default,
            help=f"{field.metadata['help']} (default: {field.default})",
        )
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    try:
        summary = write_environment_dataset(EnvironmentRolloutConfig(**args), output)
    except LeWMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
