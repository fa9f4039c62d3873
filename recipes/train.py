"""Train from a YAML recipe: `accelerate launch recipes/train.py --config recipes/configs/X.yaml`.

With no arguments it runs `recipes/configs/default.yaml` (encoder phase, then the world model).
Any recipe key can be overridden on the command line: `--learning_rate 1e-3` (every phase) or
`--encoder.max_steps 50` (the phase named `encoder`). `--help` (or `-h`) lists every key of the
recipe's tasks with its owner, type, default and help (`lewm_hf.recipe_help`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lewm_hf.errors import LeWMError
from lewm_hf.recipe import parse_cli_overrides
from lewm_hf.recipe_help import recipe_help
from lewm_hf.reporting import format_summary
from lewm_hf.tasks.runner import run_recipe

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
HELP_FLAGS = ("-h", "--help")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_help = any(arg in HELP_FLAGS for arg in argv)
    argv = [arg for arg in argv if arg not in HELP_FLAGS]
    config = DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            argv[i : i + 1] = ["--config", arg.split("=", 1)[1]]
            break
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            print("error: --config needs a path", file=sys.stderr)
            return 2
        config = Path(argv[i + 1])
        del argv[i : i + 2]
    if show_help:
        try:
            print(recipe_help(config, parse_cli_overrides(argv)), end="")
        except LeWMError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        summary = run_recipe(config, parse_cli_overrides(argv))
    except LeWMError as err:
        print(f"error: {err}", file=sys.stderr)
        _destroy_process_group(wait_for_ranks=False)
        return 2
    except BaseException:
        _destroy_process_group(wait_for_ranks=False)
        raise
    _destroy_process_group(wait_for_ranks=True)
    if os.environ.get("RANK", "0") == "0":
        print(format_summary(summary))
    return 0


def _destroy_process_group(wait_for_ranks: bool) -> None:
    """Tear down `torch.distributed`, after a barrier when every rank finished its work.

    Without the barrier, a rank that finished first tore its gloo pairs down while another rank
    was still writing the run's files, and the gloo worker threads of one of them could abort
    the process (SIGABRT) at exit. After an error, ranks may not all reach a barrier: none.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_ranks:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
