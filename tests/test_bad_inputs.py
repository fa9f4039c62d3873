"""Bad input everywhere, one table: recipes, corpora, checkpoints, the command line.

Each case must raise a typed `LeWMError` whose message names the offending field or file, and
leave nothing a later run would trust: no checkpoint, model, `result.json` or `summary.json`
under the run's output dir, and no corpus cache entry but complete ones (no temporary folder).
"""

from __future__ import annotations

import json
import runpy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM

from lewm_hf import LeWMConfig, LeWMModel, LeWMTrainer, LeWMTrainingArguments
from lewm_hf import metric_keys as K
from lewm_hf.data.dna import packaged_genome_path
from lewm_hf.errors import LeWMConfigError, LeWMError, LeWMGraphError, LeWMInputError
from lewm_hf.recipe import parse_cli_overrides
from lewm_hf.tasks.runner import run_recipe

REPO = Path(__file__).resolve().parents[1]
TRAIN_MAIN = runpy.run_path(str(REPO / "recipes" / "train.py"))["main"]

PHASE = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": None,
    "d_state": 16,
    "d_model": 32,
    "predictor_layers": 1,
    "predictor_heads": 2,
    "projector_hidden": 32,
    "num_clips": 64,
    "eval_clips": 16,
    "history_length": 2,
    "sigreg_num_slices": 64,
    "per_device_train_batch_size": 16,
    "max_steps": 2,
    "save_strategy": "no",
    "eval_strategy": "no",
    "run_evaluation": False,
}
CORPUS = {"corpus_size": 200, "eval_size": 32, "context_window": 8, "walk_length": 32}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Good inputs to spoil: a saved LeWM model, a saved Llama and a Trainer-style checkpoint."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    lewm = LeWMModel(
        LeWMConfig(
            encoder_config={
                "model_type": "llama",
                "vocab_size": 100,
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
            },
            d_state=8,
            projector_hidden=16,
            d_model=16,
            predictor_layers=1,
            predictor_heads=2,
            history_length=2,
            action_vocab_size=8,
        )
    )
    lewm.save_pretrained(root / "lewm")
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    llama.save_pretrained(root / "llama")
    checkpoint = root / "run" / "world_model" / "checkpoint-3"
    shutil.copytree(root / "lewm", checkpoint)
    (checkpoint / K.TRAINER_STATE_FILE).write_text(json.dumps({"global_step": 3}))
    return {"lewm": root / "lewm", "llama": root / "llama", "checkpoint": checkpoint}


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class Env:
    """What a case builds its input in: its own folder, the shared corpus cache, good inputs."""

    tmp: Path
    cache: Path
    saved: dict[str, Path]

    def recipe(
        self, phase: dict[str, Any] | None = None, top: dict[str, Any] | None = None, **raw: Any
    ) -> Path:
        """A one-phase world-model recipe with `phase` / `top` overrides (`raw`: replace keys
        of the written mapping as they are, e.g. `phases=3`)."""
        data = {
            "output_dir": str(self.tmp / "run"),
            "seed": 0,
            "disable_tqdm": True,
            "corpus_preset": "small",
            "corpus": dict(CORPUS),
            "corpus_cache_dir": str(self.cache),
            **(top or {}),
            "phases": [{**PHASE, **(phase or {})}],
            **raw,
        }
        return self.write("recipe.yaml", yaml.safe_dump(data, sort_keys=False))

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def copy(self, which: str) -> Path:
        """A private copy of a good input (checkpoints keep their `checkpoint-<n>` name)."""
        source = self.saved[which]
        target = self.tmp / "inputs" / source.name
        shutil.copytree(source, target)
        return target


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00\xff not json at all \xfe\x01" + bytes(10)
    path.write_bytes(bytes(data))


def run(config: Path, overrides: list[tuple[str, Any]] | None = None) -> Callable[[], Any]:
    return lambda: run_recipe(config, overrides)


@dataclass
class Case:
    """`build(env)` returns the call that must fail, with `error` and a message containing
    every string of `names(env)` (a field and/or a file)."""

    id: str
    build: Callable[[Env], Callable[[], Any]]
    error: type[LeWMError]
    names: Callable[[Env], list[str]]


def _spoiled_checkpoint(env: Env, spoil: Callable[[Path], None]) -> Path:
    checkpoint = env.copy("checkpoint")
    spoil(checkpoint)
    return checkpoint


def _trainer_resume(env: Env) -> Callable[[], Any]:
    checkpoint = _spoiled_checkpoint(env, lambda c: truncate(c / K.SAFE_WEIGHTS_FILE))
    args = LeWMTrainingArguments(
        output_dir=str(env.tmp / "run"), use_cpu=True, report_to="none", max_steps=1
    )
    trainer = LeWMTrainer(LeWMModel.from_pretrained(env.saved["lewm"]), args)
    return lambda: trainer.train(resume_from_checkpoint=str(checkpoint))


def _adapter_as_model(env: Env) -> Callable[[], Any]:
    folder = env.tmp / "inputs" / "adapter"
    folder.mkdir(parents=True)
    (folder / K.ADAPTER_CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA"}))
    return lambda: LeWMModel.from_pretrained(folder)


CASES = [
    # ---- recipes ----------------------------------------------------------------------------
    Case(
        "recipe-unknown-key",
        lambda e: run(e.recipe({"learning_rat": 0.1})),
        LeWMConfigError,
        lambda e: ["learning_rat", "unknown key", str(e.tmp / "recipe.yaml")],
    ),
    Case(
        "recipe-wrong-type",
        lambda e: run(e.recipe({"max_steps": "ten"})),
        LeWMConfigError,
        lambda e: ["max_steps", "expected int"],
    ),
    Case(
        "recipe-bool-for-int",
        lambda e: run(e.recipe({"max_steps": True})),
        LeWMConfigError,
        lambda e: ["max_steps", "expected int"],
    ),
    Case(
        "recipe-missing-file",
        lambda e: run(e.tmp / "nope.yaml"),
        LeWMConfigError,
        lambda e: [str(e.tmp / "nope.yaml"), "file not found"],
    ),
    Case(
        "recipe-missing-defaults-file",
        lambda e: run(e.write("r.yaml", "defaults: [base.yaml]\ntask: world_model\n")),
        LeWMConfigError,
        lambda e: ["defaults", str(e.tmp / "base.yaml")],
    ),
    Case(
        "recipe-defaults-cycle",
        lambda e: (
            e.write("b.yaml", "defaults: [a.yaml]\n"),
            run(e.write("a.yaml", "defaults: [b.yaml]\n")),
        )[1],
        LeWMConfigError,
        lambda e: ["defaults", "cycle", str(e.tmp / "a.yaml")],
    ),
    Case(
        "recipe-defaults-not-a-list",
        lambda e: run(e.write("r.yaml", "defaults: {a: 1}\n")),
        LeWMConfigError,
        lambda e: ["defaults", "must be a list of paths"],
    ),
    Case(
        "recipe-invalid-yaml",
        lambda e: run(e.write("r.yaml", "task: [world_model\n")),
        LeWMConfigError,
        lambda e: ["invalid YAML", str(e.tmp / "r.yaml")],
    ),
    Case(
        # safe_load refuses Python tags: a recipe can never run code.
        "recipe-python-object-tag",
        lambda e: run(e.write("r.yaml", "task: !!python/object/apply:os.system [echo pwned]\n")),
        LeWMConfigError,
        lambda e: ["invalid YAML", str(e.tmp / "r.yaml")],
    ),
    Case(
        "recipe-not-a-mapping",
        lambda e: run(e.write("r.yaml", "- task: world_model\n")),
        LeWMConfigError,
        lambda e: ["must be a YAML mapping", str(e.tmp / "r.yaml")],
    ),
    Case(
        "recipe-empty-phases",
        lambda e: run(e.recipe(phases=[])),
        LeWMConfigError,
        lambda e: ["phases", "is empty"],
    ),
    Case(
        "recipe-phases-not-a-list",
        lambda e: run(e.recipe(phases=3)),
        LeWMConfigError,
        lambda e: ["phases", "must be a list of mappings"],
    ),
    Case(
        "recipe-unknown-task",
        lambda e: run(e.recipe({"task": "chess"})),
        LeWMConfigError,
        lambda e: ["task", "chess"],
    ),
    Case(
        "recipe-bad-choice",
        lambda e: run(e.recipe({"lr_schedule": "linear"})),
        LeWMConfigError,
        lambda e: ["lr_schedule", "linear"],
    ),
    Case(
        "recipe-bad-range-ratio",
        lambda e: run(e.recipe({"collapse_var_ratio": 1.5})),
        LeWMConfigError,
        lambda e: ["collapse_var_ratio", "must lie in [0, 1]"],
    ),
    Case(
        "recipe-bad-range-model",
        lambda e: run(e.recipe({"d_state": 0})),
        LeWMConfigError,
        lambda e: ["d_state", "must be >= 1"],
    ),
    Case(
        "recipe-warmup-longer-than-run",
        lambda e: run(e.recipe({"warmup_steps": 20, "max_steps": 10})),
        LeWMConfigError,
        lambda e: ["warmup_steps", "exceeds the run's 10 training steps"],
    ),
    Case(
        "recipe-negative-warmup",
        lambda e: run(e.recipe({"warmup_steps": -1})),
        LeWMConfigError,
        lambda e: ["warmup_steps", "must be >= 0"],
    ),
    Case(
        "recipe-zero-batch-size",
        lambda e: run(e.recipe({"per_device_train_batch_size": 0})),
        LeWMConfigError,
        lambda e: ["per_device_train_batch_size", "must be an integer >= 1"],
    ),
    Case(
        "recipe-unknown-optimizer",
        lambda e: run(e.recipe({"optim": "nope"})),
        LeWMConfigError,
        lambda e: ["optim='nope'", str(e.tmp / "recipe.yaml")],
    ),
    Case(
        "recipe-zero-max-nonfinite-steps",
        lambda e: run(e.recipe({"max_nonfinite_steps": 0})),
        LeWMConfigError,
        lambda e: ["max_nonfinite_steps", "must be >= 1"],
    ),
    # ---- corpora ----------------------------------------------------------------------------
    Case(
        "corpus-unknown-field",
        lambda e: run(e.recipe(top={"corpus": {**CORPUS, "num_blokcs": 3}})),
        LeWMConfigError,
        lambda e: ["corpus.num_blokcs", "unknown corpus field"],
    ),
    Case(
        "corpus-unknown-preset",
        lambda e: run(e.recipe(top={"corpus_preset": "huge"})),
        LeWMConfigError,
        lambda e: ["preset", "huge"],
    ),
    Case(
        "corpus-walks-shorter-than-two-windows",
        lambda e: run(e.recipe(top={"corpus": {**CORPUS, "walk_length": 10}})),
        LeWMConfigError,
        lambda e: ["walk_length", "2 * context_window"],
    ),
    Case(
        # No edge across blocks: no strongly connected graph, no rule can be met.
        "corpus-unsatisfiable-graph",
        lambda e: run(e.recipe(top={"corpus": {**CORPUS, "p_out": 0.0}})),
        LeWMGraphError,
        lambda e: ["p_out=0.0", "no valid DCSBM graph"],
    ),
    Case(
        "corpus-unsatisfiable-rule-delay",
        lambda e: run(e.recipe(top={"corpus": {**CORPUS, "r_scales": [0.01]}})),
        LeWMConfigError,
        lambda e: ["r_scales", "r=0"],
    ),
    Case(
        "corpus-too-many-rules",
        lambda e: run(e.recipe(top={"corpus": {**CORPUS, "jumpers_per_block": 30}})),
        LeWMConfigError,
        lambda e: ["jumpers_per_block=30"],
    ),
    Case(
        # Locating a packaged genome imports its package: only an allow-list may be named.
        "corpus-genome-package-not-allowed",
        lambda e: lambda: packaged_genome_path("os:data/genome.fa"),
        LeWMConfigError,
        lambda e: ["genome", "'os' is not allowed"],
    ),
    # ---- checkpoints --------------------------------------------------------------------------
    Case(
        "checkpoint-missing-folder",
        lambda e: run(e.recipe({"resume_from_checkpoint": str(e.tmp / "checkpoint-9")})),
        LeWMConfigError,
        lambda e: ["resume_from_checkpoint", str(e.tmp / "checkpoint-9")],
    ),
    Case(
        "checkpoint-none-to-resume",
        lambda e: run(e.recipe({"resume_from_checkpoint": True})),
        LeWMConfigError,
        lambda e: ["resume_from_checkpoint", "no checkpoint-* folder"],
    ),
    Case(
        "checkpoint-truncated-safetensors",
        lambda e: run(
            e.recipe(
                {
                    "resume_from_checkpoint": str(
                        _spoiled_checkpoint(e, lambda c: truncate(c / K.SAFE_WEIGHTS_FILE))
                    )
                }
            )
        ),
        LeWMInputError,
        lambda e: ["resume_from_checkpoint", f"checkpoint-3/{K.SAFE_WEIGHTS_FILE}", "truncated"],
    ),
    Case(
        "checkpoint-corrupt-safetensors",
        lambda e: run(
            e.recipe(
                {
                    "resume_from_checkpoint": str(
                        _spoiled_checkpoint(e, lambda c: corrupt_header(c / K.SAFE_WEIGHTS_FILE))
                    )
                }
            )
        ),
        LeWMInputError,
        lambda e: [f"checkpoint-3/{K.SAFE_WEIGHTS_FILE}", "corrupt"],
    ),
    Case(
        "checkpoint-missing-safetensors",
        lambda e: run(
            e.recipe(
                {
                    "resume_from_checkpoint": str(
                        _spoiled_checkpoint(e, lambda c: (c / K.SAFE_WEIGHTS_FILE).unlink())
                    )
                }
            )
        ),
        LeWMInputError,
        lambda e: [f"checkpoint-3/{K.SAFE_WEIGHTS_FILE}", "missing weights file"],
    ),
    Case(
        "checkpoint-corrupt-trainer-state",
        lambda e: run(
            e.recipe(
                {
                    "resume_from_checkpoint": str(
                        _spoiled_checkpoint(
                            e, lambda c: (c / K.TRAINER_STATE_FILE).write_text("{oops")
                        )
                    )
                }
            )
        ),
        LeWMInputError,
        lambda e: [f"checkpoint-3/{K.TRAINER_STATE_FILE}", "unreadable JSON"],
    ),
    Case(
        "checkpoint-trainer-resume-truncated",
        _trainer_resume,
        LeWMInputError,
        lambda e: ["resume_from_checkpoint", K.SAFE_WEIGHTS_FILE, "truncated"],
    ),
    Case(
        "model-truncated-safetensors",
        lambda e: (
            lambda folder: (
                truncate(folder / K.SAFE_WEIGHTS_FILE),
                lambda: AutoModel.from_pretrained(folder),
            )[1]
        )(e.copy("lewm")),
        LeWMInputError,
        lambda e: [f"lewm/{K.SAFE_WEIGHTS_FILE}", "truncated"],
    ),
    Case(
        "model-corrupt-safetensors",
        lambda e: (
            lambda folder: (
                corrupt_header(folder / K.SAFE_WEIGHTS_FILE),
                lambda: LeWMModel.from_pretrained(folder),
            )[1]
        )(e.copy("lewm")),
        LeWMInputError,
        lambda e: [f"lewm/{K.SAFE_WEIGHTS_FILE}", "corrupt"],
    ),
    Case(
        "model-wrong-model-type",
        lambda e: lambda: LeWMModel.from_pretrained(e.saved["llama"]),
        LeWMInputError,
        lambda e: [f"llama/{K.CONFIG_FILE}", "model_type is 'llama', expected 'lewm'"],
    ),
    Case(
        # A LoRA adapter folder is not a whole model (an adapter for *another base* needs an
        # adapter-loading entry point, which no recipe has yet).
        "model-adapter-folder-instead-of-a-model",
        _adapter_as_model,
        LeWMInputError,
        lambda e: [f"adapter/{K.CONFIG_FILE}", "not a saved model folder"],
    ),
    Case(
        "lm-model-truncated-safetensors",
        lambda e: (
            lambda folder: (
                truncate(folder / K.SAFE_WEIGHTS_FILE),
                run(
                    e.recipe(
                        phases=[
                            {
                                "name": "encoder",
                                "task": "lm",
                                "model_name_or_path": str(folder),
                                "max_steps": 1,
                                "save_strategy": "no",
                            }
                        ]
                    )
                ),
            )[1]
        )(e.copy("llama")),
        LeWMInputError,
        lambda e: ["model_name_or_path", f"llama/{K.SAFE_WEIGHTS_FILE}", "truncated"],
    ),
    Case(
        "encoder-path-missing",
        lambda e: run(e.recipe({"encoder_path": str(e.tmp / "no_encoder")})),
        LeWMInputError,
        lambda e: ["encoder_path", str(e.tmp / "no_encoder")],
    ),
    Case(
        "encoder-path-truncated-safetensors",
        lambda e: (
            lambda folder: (
                truncate(folder / K.SAFE_WEIGHTS_FILE),
                run(e.recipe({"encoder_path": str(folder)})),
            )[1]
        )(e.copy("llama")),
        LeWMInputError,
        lambda e: ["encoder_path", f"llama/{K.SAFE_WEIGHTS_FILE}", "truncated"],
    ),
]


def trusted_outputs(env: Env) -> list[str]:
    """What a later run could pick up: checkpoints, weights and results under the run dir,
    temporary or markerless corpus folders in the cache."""
    found = []
    run_dir = env.tmp / "run"
    if run_dir.exists():
        for path in run_dir.rglob("*"):
            if path.name.startswith("checkpoint-") or path.name in (
                K.SAFE_WEIGHTS_FILE,
                K.RESULT_FILE,
                K.SUMMARY_FILE,
            ):
                found.append(str(path))
    if env.cache.exists():
        for entry in env.cache.iterdir():
            if entry.name.startswith(".tmp-") or not (entry / "COMPLETE").is_file():
                found.append(str(entry))
    return found


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpora")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_typed_error_naming_it_and_leaves_nothing_to_trust(
    case, tmp_path, cache_dir, saved
):
    env = Env(tmp_path, cache_dir, saved)
    call = case.build(env)
    with pytest.raises(case.error) as info:
        call()
    message = str(info.value)
    for name in case.names(env):
        assert name in message, f"{name!r} not in {message!r}"
    assert trusted_outputs(env) == []


def test_the_table_covers_at_least_30_cases():
    assert len(CASES) + len(CLI_CASES) >= 30


# ---------------------------------------------------------------------------------------------
# The command line: `recipes/train.py` exits 2 with `error: ...` on stderr


CLI_CASES = [
    # A flag without a value is `true`, which a float field refuses.
    ("flag-without-value", ["--learning_rate"], "learning_rate=True: expected float"),
    ("unknown-phase-prefix", ["--nope.max_steps", "3"], "unknown phase 'nope'"),
    ("config-without-path", ["--config"], "--config needs a path"),
    ("value-without-flag", ["max_steps"], "cli='max_steps': expected --key value"),
    ("wrong-type-on-the-cli", ["--max_steps", "abc"], "max_steps='abc': expected int"),
]


@pytest.mark.parametrize(
    "argv, expected", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_flags_exit_2_with_an_error_line(
    argv, expected, tmp_path, cache_dir, saved, capsys
):
    env = Env(tmp_path, cache_dir, saved)
    config = env.recipe()
    full = argv if argv == ["--config"] else ["--config", str(config), *argv]
    assert TRAIN_MAIN(full) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert trusted_outputs(env) == []


def test_cli_overrides_parse_yaml_scalars_safely():
    # A CLI value is parsed with yaml.safe_load too: a Python tag stays a plain string.
    assert parse_cli_overrides(["--name", "!!python/object/apply:os.system [x]"]) == [
        ("name", "!!python/object/apply:os.system [x]")
    ]
