"""Train from a YAML recipe on a Ray cluster: `python recipes/train_ray.py --config X.yaml
--num_workers N`.

Ray Train's `TorchTrainer` starts N workers; each runs the same phase runner as
`accelerate launch recipes/train.py` does in each process (`lewm_hf.tasks.ray_train`). N workers
at `per_device_train_batch_size` b train like one process at batch N b. Launcher flags:

- `--num_workers N` (default 2), `--use_gpu` (one GPU per worker, NCCL; else CPU workers, gloo);
- `--address ADDR` (a running cluster: `auto`, `ray://head:10001`; default: a local cluster);
- `--storage_path PATH` (where Ray keeps the reported checkpoints, shared or `s3://...`;
  default `<output_dir>/ray`), `--name NAME` (the Ray run; default the recipe's file stem);
- `--max_failures K` (restart the workers up to K times after a lost worker, each time from the
  last reported checkpoint; default 0).

Every other flag is a recipe override, as for `recipes/train.py` (`--learning_rate 1e-3`,
`--world_model.max_steps 50`). Needs the `ray` extra: `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lewm_hf.errors import LeWMError
from lewm_hf.recipe import parse_cli_overrides
from lewm_hf.reporting import format_summary

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
# Launcher flags with a value, and their types; `--use_gpu` takes none.
LAUNCHER_FLAGS = {
    "config": Path,
    "num_workers": int,
    "address": str,
    "storage_path": str,
    "name": str,
    "max_failures": int,
}


def split_launcher_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """The launcher's flags (`--flag value` or `--flag=value`) and the recipe overrides left.

    Raises:
        `ValueError`: for a launcher flag without its value or with a bad one.
    """
    flags: dict = {"use_gpu": False}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name == "use_gpu":
            flags["use_gpu"] = True
        elif name in LAUNCHER_FLAGS:
            if not inline:
                if i + 1 >= len(argv):
                    raise ValueError(f"--{name} needs a value")
                i += 1
                inline = argv[i]
            try:
                flags[name] = LAUNCHER_FLAGS[name](inline)
            except ValueError as err:
                raise ValueError(f"--{name} {inline!r}: {err}") from err
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, rest = split_launcher_flags(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from lewm_hf.tasks.ray_train import train_on_ray

    try:
        summary = train_on_ray(
            flags.pop("config", DEFAULT_CONFIG), parse_cli_overrides(rest), **flags
        )
    except LeWMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
