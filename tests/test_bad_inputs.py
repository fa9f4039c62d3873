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
from _builders import TINY_PHASE_MODEL, write_walk_recipe
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
    **TINY_PHASE_MODEL,
    "num_clips": 64,
    "eval_clips": 16,
    "per_device_train_batch_size": 16,
    "max_steps": 2,
    "save_strategy": "no",
    "eval_strategy": "no",
    "run_evaluation": False,
}
CORPUS = {"corpus_size": 200, "eval_size": 32, "context_window": 8, "walk_length": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


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
        self,
        phase: dict[str, Any] | None = None,
        top: dict[str, Any] | None = None,
        phases: Any = None,
    ) -> Path:
        """`recipe.yaml`: one world-model phase with `phase` overrides (or `phases` as they
        are, e.g. `3`) on the `CORPUS` walks, with `top` overrides."""
        if phases is None:
            phases = [{**PHASE, **(phase or {})}]
        return write_walk_recipe(
            self.tmp, self.cache, phases, **{"corpus": dict(CORPUS), **(top or {})}
        )

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


# In a case's values and names, `TMP` stands for the case's own folder.
TMP = "<tmp>"
RECIPE = f"{TMP}/recipe.yaml"

Build = Callable[[Env], Callable[[], Any]]


def here(env: Env, value: Any) -> Any:
    """`value` with `TMP` replaced by the case's folder (strings; other values as they are)."""
    return value.replace(TMP, str(env.tmp)) if isinstance(value, str) else value


def case(case_id: str, build: Build, error: type[LeWMError], names: list[str]) -> Any:
    """A row of the table: `build(env)` returns the call that must fail with `error` and a
    message containing every string of `names` (a field and/or a file)."""
    return pytest.param(build, error, names, id=case_id)


def bad_phase(
    case_id: str,
    values: dict[str, Any],
    names: list[str],
    error: type[LeWMError] = LeWMConfigError,
) -> Any:
    """A recipe whose world-model phase has `values`."""
    return case(
        case_id, lambda e: run(e.recipe({k: here(e, v) for k, v in values.items()})), error, names
    )


def bad_recipe(case_id: str, top: dict[str, Any], names: list[str], **phases: Any) -> Any:
    """A recipe with the top-level keys `top` (or its `phases` replaced)."""
    return case(case_id, lambda e: run(e.recipe(top=top, **phases)), LeWMConfigError, names)


def bad_corpus(
    case_id: str,
    fields: dict[str, Any],
    names: list[str],
    error: type[LeWMError] = LeWMConfigError,
) -> Any:
    """A recipe whose corpus has `fields` over `CORPUS`."""
    return case(
        case_id, lambda e: run(e.recipe(top={"corpus": {**CORPUS, **fields}})), error, names
    )


def bad_files(case_id: str, files: dict[str, str], name: str, names: list[str]) -> Any:
    """The recipe file `name` after writing `files` (in order) into the case's folder."""

    def build(env: Env) -> Callable[[], Any]:
        for file, text in files.items():
            env.write(file, text)
        return run(env.tmp / name)

    return case(case_id, build, LeWMConfigError, names)


def bad_resume(case_id: str, spoil: Callable[[Path], None], names: list[str]) -> Any:
    """A recipe resuming from a copy of the saved checkpoint spoiled by `spoil`."""
    return case(
        case_id,
        lambda e: run(e.recipe({"resume_from_checkpoint": str(_spoiled_checkpoint(e, spoil))})),
        LeWMInputError,
        names,
    )


def bad_weights(
    case_id: str,
    which: str,
    spoil: Callable[[Path], None],
    load: Callable[[Env, Path], Callable[[], Any]],
    names: list[str],
) -> Any:
    """`load(env, folder)` of a copy of the saved `which` whose `model.safetensors` `spoil`
    damaged."""

    def build(env: Env) -> Callable[[], Any]:
        folder = env.copy(which)
        spoil(folder / "model.safetensors")
        return load(env, folder)

    return case(case_id, build, LeWMInputError, names)


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


def _lm_phase_from(env: Env, folder: Path) -> Callable[[], Any]:
    """An encoder phase training the causal LM saved in `folder`."""
    phase = {
        "name": "encoder",
        "task": "lm",
        "model_name_or_path": str(folder),
        "max_steps": 1,
        "save_strategy": "no",
    }
    return run(env.recipe(phases=[phase]))


CASES = [
    # ---- recipes ----------------------------------------------------------------------------
    bad_phase("recipe-unknown-key", {"learning_rat": 0.1}, ["learning_rat", "unknown key", RECIPE]),
    bad_phase("recipe-wrong-type", {"max_steps": "ten"}, ["max_steps", "expected int"]),
    bad_phase("recipe-bool-for-int", {"max_steps": True}, ["max_steps", "expected int"]),
    bad_files("recipe-missing-file", {}, "nope.yaml", [f"{TMP}/nope.yaml", "file not found"]),
    bad_files(
        "recipe-missing-defaults-file",
        {"r.yaml": "defaults: [base.yaml]\ntask: world_model\n"},
        "r.yaml",
        ["defaults", f"{TMP}/base.yaml"],
    ),
    bad_files(
        "recipe-defaults-cycle",
        {"b.yaml": "defaults: [a.yaml]\n", "a.yaml": "defaults: [b.yaml]\n"},
        "a.yaml",
        ["defaults", "cycle", f"{TMP}/a.yaml"],
    ),
    bad_files(
        "recipe-defaults-not-a-list",
        {"r.yaml": "defaults: {a: 1}\n"},
        "r.yaml",
        ["defaults", "must be a list of paths"],
    ),
    bad_files(
        "recipe-invalid-yaml",
        {"r.yaml": "task: [world_model\n"},
        "r.yaml",
        ["invalid YAML", f"{TMP}/r.yaml"],
    ),
    # safe_load refuses Python tags: a recipe can never run code.
    bad_files(
        "recipe-python-object-tag",
        {"r.yaml": "task: !!python/object/apply:os.system [echo pwned]\n"},
        "r.yaml",
        ["invalid YAML", f"{TMP}/r.yaml"],
    ),
    bad_files(
        "recipe-not-a-mapping",
        {"r.yaml": "- task: world_model\n"},
        "r.yaml",
        ["must be a YAML mapping", f"{TMP}/r.yaml"],
    ),
    bad_recipe("recipe-empty-phases", {}, ["phases", "is empty"], phases=[]),
    bad_recipe("recipe-phases-not-a-list", {}, ["phases", "must be a list of mappings"], phases=3),
    bad_phase("recipe-unknown-task", {"task": "chess"}, ["task", "chess"]),
    bad_phase("recipe-bad-choice", {"lr_schedule": "linear"}, ["lr_schedule", "linear"]),
    bad_phase(
        "recipe-bad-range-ratio",
        {"collapse_var_ratio": 1.5},
        ["collapse_var_ratio", "must lie in [0, 1]"],
    ),
    bad_phase("recipe-bad-range-model", {"d_state": 0}, ["d_state", "must be >= 1"]),
    bad_phase(
        "recipe-warmup-longer-than-run",
        {"warmup_steps": 20, "max_steps": 10},
        ["warmup_steps", "exceeds the run's 10 training steps"],
    ),
    bad_phase("recipe-negative-warmup", {"warmup_steps": -1}, ["warmup_steps", "must be >= 0"]),
    bad_phase(
        "recipe-zero-batch-size",
        {"per_device_train_batch_size": 0},
        ["per_device_train_batch_size", "must be an integer >= 1"],
    ),
    bad_phase("recipe-unknown-optimizer", {"optim": "nope"}, ["optim='nope'", RECIPE]),
    bad_phase(
        "recipe-zero-max-nonfinite-steps",
        {"max_nonfinite_steps": 0},
        ["max_nonfinite_steps", "must be >= 1"],
    ),
    # ---- corpora ----------------------------------------------------------------------------
    bad_corpus(
        "corpus-unknown-field", {"num_blokcs": 3}, ["corpus.num_blokcs", "unknown corpus field"]
    ),
    bad_recipe("corpus-unknown-preset", {"corpus_preset": "huge"}, ["preset", "huge"]),
    bad_corpus(
        "corpus-walks-shorter-than-two-windows",
        {"walk_length": 10},
        ["walk_length", "2 * context_window"],
    ),
    # No edge across blocks: no strongly connected graph, no rule can be met.
    bad_corpus(
        "corpus-unsatisfiable-graph",
        {"p_out": 0.0},
        ["p_out=0.0", "no valid DCSBM graph"],
        error=LeWMGraphError,
    ),
    bad_corpus("corpus-unsatisfiable-rule-delay", {"r_scales": [0.01]}, ["r_scales", "r=0"]),
    bad_corpus("corpus-too-many-rules", {"jumpers_per_block": 30}, ["jumpers_per_block=30"]),
    # Locating a packaged genome imports its package: only an allow-list may be named.
    case(
        "corpus-genome-package-not-allowed",
        lambda e: lambda: packaged_genome_path("os:data/genome.fa"),
        LeWMConfigError,
        ["genome", "'os' is not allowed"],
    ),
    # ---- checkpoints --------------------------------------------------------------------------
    bad_phase(
        "checkpoint-missing-folder",
        {"resume_from_checkpoint": f"{TMP}/checkpoint-9"},
        ["resume_from_checkpoint", f"{TMP}/checkpoint-9"],
    ),
    bad_phase(
        "checkpoint-none-to-resume",
        {"resume_from_checkpoint": True},
        ["resume_from_checkpoint", "no checkpoint-* folder"],
    ),
    bad_resume(
        "checkpoint-truncated-safetensors",
        lambda c: truncate(c / "model.safetensors"),
        ["resume_from_checkpoint", "checkpoint-3/model.safetensors", "truncated"],
    ),
    bad_resume(
        "checkpoint-corrupt-safetensors",
        lambda c: corrupt_header(c / "model.safetensors"),
        ["checkpoint-3/model.safetensors", "corrupt"],
    ),
    bad_resume(
        "checkpoint-missing-safetensors",
        lambda c: (c / "model.safetensors").unlink(),
        ["checkpoint-3/model.safetensors", "missing weights file"],
    ),
    bad_resume(
        "checkpoint-corrupt-trainer-state",
        lambda c: (c / "trainer_state.json").write_text("{oops"),
        ["checkpoint-3/trainer_state.json", "unreadable JSON"],
    ),
    case(
        "checkpoint-trainer-resume-truncated",
        _trainer_resume,
        LeWMInputError,
        ["resume_from_checkpoint", "model.safetensors", "truncated"],
    ),
    bad_weights(
        "model-truncated-safetensors",
        "lewm",
        truncate,
        lambda e, folder: lambda: AutoModel.from_pretrained(folder),
        ["lewm/model.safetensors", "truncated"],
    ),
    bad_weights(
        "model-corrupt-safetensors",
        "lewm",
        corrupt_header,
        lambda e, folder: lambda: LeWMModel.from_pretrained(folder),
        ["lewm/model.safetensors", "corrupt"],
    ),
    case(
        "model-wrong-model-type",
        lambda e: lambda: LeWMModel.from_pretrained(e.saved["llama"]),
        LeWMInputError,
        ["llama/config.json", "model_type is 'llama', expected 'lewm'"],
    ),
    # A LoRA adapter folder is not a whole model (an adapter for *another base* needs an
    # adapter-loading entry point, which no recipe has yet).
    case(
        "model-adapter-folder-instead-of-a-model",
        _adapter_as_model,
        LeWMInputError,
        ["adapter/config.json", "not a saved model folder"],
    ),
    bad_weights(
        "lm-model-truncated-safetensors",
        "llama",
        truncate,
        _lm_phase_from,
        ["model_name_or_path", "llama/model.safetensors", "truncated"],
    ),
    bad_phase(
        "encoder-path-missing",
        {"encoder_path": f"{TMP}/no_encoder"},
        ["encoder_path", f"{TMP}/no_encoder"],
        error=LeWMInputError,
    ),
    bad_weights(
        "encoder-path-truncated-safetensors",
        "llama",
        truncate,
        lambda e, folder: run(e.recipe({"encoder_path": str(folder)})),
        ["encoder_path", "llama/model.safetensors", "truncated"],
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


@pytest.mark.parametrize(("build", "error", "names"), CASES)
def test_bad_input_is_a_typed_error_naming_it_and_leaves_nothing_to_trust(
    build, error, names, tmp_path, cache_dir, saved
):
    env = Env(tmp_path, Path(cache_dir), saved)
    call = build(env)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for name in [here(env, n) for n in names]:
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
    env = Env(tmp_path, Path(cache_dir), saved)
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
