"""Model card and Hub push, tested at the client boundary without a network.

The Trainer talks to the Hub through one `HfApi` object (`transformers.trainer.hf_api()`), so
the tests put a `RecordingHfApi` there: `create_repo` records the repo, and `upload_folder`
runs `HfApi`'s own client-side file selection (`_prepare_upload_folder_additions` with the
Trainer's ignore patterns and huggingface_hub's defaults) and commits by copying the selected
files into a local folder, one per repo. `HF_HUB_OFFLINE=1` makes any other Hub call fail.
"""

from __future__ import annotations

import json
import warnings
from concurrent.futures import Future
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers.trainer
import yaml
from _builders import TINY_PHASE_MODEL, held_out_batch, pretrained_like
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS
from peft import AutoPeftModel
from safetensors.torch import load_file
from transformers import AutoModel

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.determinism import run_seeds
from lewm_hf.errors import LeWMConfigError
from lewm_hf.hub import CopyBaselineWarning, write_model_card
from lewm_hf.losses import prediction_loss
from lewm_hf.tasks.runner import run_recipe, validate_recipe

TINY_WORLD_MODEL = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": None,
    "encoder_mode": "frozen",
    "dropout": 0.0,
    **TINY_PHASE_MODEL,
    "num_clips": 256,
    "eval_clips": 64,
    "max_steps": 40,
    "learning_rate": 1e-2,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "save_strategy": "no",
    "logging_steps": 4,
    "run_evaluation": False,  # the evaluation suite's card rows: test_hub_card_*
}  # beats the copy baseline (about 0.9x) in 40 steps


class RecordingHfApi(HfApi):
    """An `HfApi` whose commits land in `root/<repo id>/` (see the module docstring)."""

    def __init__(self, root: Path):
        super().__init__(endpoint="https://hub.invalid", token="hf_offline")
        self.root = root
        self.repos: list[tuple[str, bool | None]] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        repo_id = repo_id if "/" in repo_id else f"tester/{repo_id}"
        self.repos.append((repo_id, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def _validate_yaml(self, content, *, repo_type=None, token=None):
        ModelCard(content)  # parses the metadata locally instead of POST /api/validate-yaml

    def upload_folder(
        self,
        *,
        repo_id,
        folder_path,
        path_in_repo=None,
        commit_message=None,
        ignore_patterns=None,
        allow_patterns=None,
        run_as_future=False,
        **kwargs,
    ):
        ignore = (
            [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        )
        operations = self._prepare_upload_folder_additions(
            folder_path,
            path_in_repo or "",
            allow_patterns=allow_patterns,
            ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS,
        )
        repo = self.root / repo_id
        for op in operations:
            target = repo / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(op.path_or_fileobj).read_bytes())
        self.commits.append(
            {"message": commit_message, "files": sorted(op.path_in_repo for op in operations)}
        )
        if run_as_future:
            future: Future = Future()
            future.set_result(None)
            return future
        return None


@pytest.fixture
def hub(tmp_path, monkeypatch) -> RecordingHfApi:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    api = RecordingHfApi(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    return api


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_hub_push_file_set_card_and_bitwise_reload(tmp_path, cache_dir, hub, write_walk_recipe):
    phase = {**TINY_WORLD_MODEL, "push_to_hub": True, "hub_model_id": "me/tiny-wm"}
    phase["hub_private_repo"] = True
    recipe = write_walk_recipe(tmp_path, cache_dir, [phase])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CopyBaselineWarning)  # this one beats the copy baseline
        run_recipe(recipe)
    out = tmp_path / "run" / "world_model"
    assert hub.repos == [("me/tiny-wm", True)]
    assert len(hub.commits) == 1 and hub.commits[0]["message"] == "End of training"
    pushed = hub.root / "me" / "tiny-wm"
    assert files_in(pushed) == {
        K.MODEL_CARD_FILE,
        K.CONFIG_FILE,
        K.SAFE_WEIGHTS_FILE,
        "training_args.bin",
        K.RESULT_FILE,
        K.CURVES_PLOT,
        K.RECIPE_FILE,
        K.DETERMINISM_FILE,
    }
    for name in files_in(pushed):
        assert (pushed / name).read_bytes() == (out / name).read_bytes(), name

    # The pushed model loads with AutoModel and computes what the trained one does, bitwise.
    inputs = held_out_batch(recipe, cache_dir)
    reloaded = AutoModel.from_pretrained(pushed).eval()
    local = LeWMModel.from_pretrained(out).eval()
    with torch.no_grad():
        a, b = reloaded(**inputs), local(**inputs)
    assert torch.equal(a.predictions, b.predictions) and torch.equal(a.latents, b.latents)
    saved = load_file(pushed / K.SAFE_WEIGHTS_FILE)
    assert all(torch.equal(saved[k], v) for k, v in reloaded.state_dict().items() if k in saved)

    # The card: metadata, metrics equal to result.json (table and model-index), how to load.
    result = json.loads((out / K.RESULT_FILE).read_text())
    assert result[K.EVAL_PRED_MSE] < result[K.EVAL_COPY_MSE]
    card = ModelCard.load(pushed / K.MODEL_CARD_FILE)
    assert card.data.license == "apache-2.0"
    assert {"lewm", "world-model"} <= set(card.data.tags)
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics[K.EVAL_PRED_MSE] == result[K.EVAL_PRED_MSE]
    assert metrics[K.EVAL_COPY_MSE] == result[K.EVAL_COPY_MSE]
    assert card.data.to_dict()["model-index"][0]["name"] == "tiny-wm"
    text = card.text
    assert "does not beat the copy baseline" not in text
    assert f"{result[K.EVAL_PRED_MSE]:.4g} | {result[K.EVAL_COPY_MSE]:.4g}" in text
    assert "import lewm_hf" in text and 'AutoModel.from_pretrained("me/tiny-wm")' in text
    assert f"![training curves]({K.CURVES_PLOT})" in text
    record = json.loads((out / K.DETERMINISM_FILE).read_text())
    assert record["command"] in text
    seeds = run_seeds(validate_recipe(recipe)[0].args.training)
    assert record["seeds"] == {
        "seed": 0,
        "data_seed": seeds.data,
        "model_init_seed": seeds.model,
        "lora_init_seed": seeds.lora,
    }
    resolved = yaml.safe_load((out / K.RECIPE_FILE).read_text())
    assert resolved["hub_model_id"] == "me/tiny-wm" and resolved["d_state"] == 16


def test_hub_every_save_pushes_each_save_but_no_checkpoint(
    tmp_path, cache_dir, hub, write_walk_recipe
):
    phase = {
        **TINY_WORLD_MODEL,
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 2,
        "push_to_hub": True,
        "hub_strategy": "every_save",
    }
    recipe = write_walk_recipe(tmp_path, cache_dir, [phase])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CopyBaselineWarning)
        run_recipe(recipe)
    # The default repo name: the run's and the phase's.
    assert [r for r, _ in hub.repos] == ["tester/run-world_model"]
    messages = [c["message"] for c in hub.commits]
    assert messages == [
        "Training in progress, step 2",
        "Training in progress, step 4",
        "End of training",
    ]
    assert all(not f.startswith("checkpoint-") for c in hub.commits for f in c["files"])
    assert (tmp_path / "run" / "world_model" / "checkpoint-4").is_dir()
    assert K.RESULT_FILE in hub.commits[-1]["files"]

    # hub_strategy: checkpoint also uploads the last checkpoint, as `last-checkpoint/`.
    phase.update(hub_strategy="checkpoint", hub_model_id="me/ckpt")
    recipe = write_walk_recipe(tmp_path / "second", cache_dir, [phase])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CopyBaselineWarning)
        run_recipe(recipe)
    pushed = files_in(hub.root / "me" / "ckpt")
    assert f"last-checkpoint/{K.TRAINER_STATE_FILE}" in pushed
    assert not any(f.startswith("checkpoint-") for f in pushed)


def test_hub_warns_and_the_card_says_so_when_the_model_does_not_beat_copy(
    tmp_path, cache_dir, hub, write_walk_recipe
):
    # learning_rate 0: the untrained predictor returns z_t, exactly the copy baseline.
    phase = {**TINY_WORLD_MODEL, "max_steps": 2, "learning_rate": 0.0}
    phase.update(push_to_hub=True, hub_model_id="me/copy")
    recipe = write_walk_recipe(tmp_path, cache_dir, [phase])
    with pytest.warns(CopyBaselineWarning, match="does not beat the copy baseline"):
        run_recipe(recipe)
    result = json.loads((tmp_path / "run" / "world_model" / K.RESULT_FILE).read_text())
    assert result[K.EVAL_PRED_MSE] == result[K.EVAL_COPY_MSE]
    card = ModelCard.load(hub.root / "me" / "copy" / K.MODEL_CARD_FILE)
    first_lines = card.text.strip().splitlines()[:2]
    assert first_lines[0] == "> [!WARNING]"
    assert "does not beat the copy baseline" in first_lines[1]


def test_hub_lora_run_pushes_adapters_and_loads_with_autopeftmodel(
    tmp_path, cache_dir, hub, tiny_lewm_model, write_walk_recipe
):
    # A saved world model (the LoRA recipe's starting point), adapted and pushed as adapters.
    base_dir = tmp_path / "base"
    model = tiny_lewm_model(
        encoder_config=None,
        vocab_size=100,
        history_length=2,
        action_vocab_size=47,
        encoder_mode="frozen",
    )
    pretrained_like(model).save_pretrained(base_dir)
    phase = {
        "name": "world_model",
        "task": "world_model",
        "model_name_or_path": str(base_dir),
        "num_clips": 256,
        "eval_clips": 64,
        "history_length": 2,
        "max_steps": 4,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "save_strategy": "no",
        "lora_targets": ["predictor", "action_encoder"],
        "run_evaluation": False,
        "push_to_hub": True,
        "hub_model_id": "me/tiny-lora",
    }
    recipe = write_walk_recipe(tmp_path, cache_dir, [phase])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CopyBaselineWarning)
        summary = run_recipe(recipe)["phases"]["world_model"]
    out = tmp_path / "run" / "world_model"
    pushed = hub.root / "me" / "tiny-lora"
    files = files_in(pushed)
    assert {
        K.ADAPTER_CONFIG_FILE,
        K.ADAPTER_WEIGHTS_FILE,
        K.MODEL_CARD_FILE,
        K.RESULT_FILE,
    } <= files
    assert {K.RECIPE_FILE, K.DETERMINISM_FILE, K.CURVES_PLOT} <= files
    assert K.SAFE_WEIGHTS_FILE not in files
    result = json.loads((out / K.RESULT_FILE).read_text())
    assert summary[K.TRAINABLE_FRACTION] == result[K.TRAINABLE_FRACTION] < 0.5
    # The starting model's numbers on this data (one evaluation batch), computed independently.
    inputs = held_out_batch(recipe, cache_dir)
    with torch.no_grad():
        start = LeWMModel.from_pretrained(base_dir).eval()(**inputs)
    pred = prediction_loss(start.predictions, start.targets, None, "mse").item()
    copy = prediction_loss(start.latents[:, :-1], start.targets, None, "mse").item()
    assert result[K.BEFORE_PREFIX + K.EVAL_PRED_MSE] == pytest.approx(pred, rel=1e-5)
    assert result[K.BEFORE_PREFIX + K.EVAL_COPY_MSE] == pytest.approx(copy, rel=1e-5)
    assert result[K.EVAL_PRED_MSE] < result[K.BEFORE_PREFIX + K.EVAL_PRED_MSE]
    card = ModelCard.load(pushed / K.MODEL_CARD_FILE)
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert "AutoPeftModel.from_pretrained" in card.text
    loaded = AutoPeftModel.from_pretrained(pushed).eval()
    merged = AutoPeftModel.from_pretrained(out).eval().merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs).predictions, merged(**inputs).predictions, rtol=0, atol=1e-6
        )


def test_hub_two_phases_cannot_share_a_repo(tmp_path, cache_dir, write_walk_recipe):
    phases = [
        {**TINY_WORLD_MODEL, "name": "a", "push_to_hub": True, "hub_model_id": "me/x"},
        {**TINY_WORLD_MODEL, "name": "b", "push_to_hub": True, "hub_model_id": "me/x"},
    ]
    with pytest.raises(LeWMConfigError, match="hub_model_id"):
        validate_recipe(write_walk_recipe(tmp_path, cache_dir, phases))


def test_hub_card_shows_evaluation_rows_equal_to_result(tmp_path):
    # Action discrimination and planning rows, where result.json has them.
    result = {
        "phase": "world_model",
        "curves": {},
        K.EVAL_PRED_MSE: 0.25,
        K.EVAL_COPY_MSE: 4.0,
        K.BEFORE_PREFIX + K.EVAL_PRED_MSE: 3.5,
        K.BEFORE_PREFIX + K.EVAL_COPY_MSE: 4.0,
        K.EVAL_ACTION_R1: 0.625,
        K.EVAL_ACTION_R1_COPY: 0.125,
        K.EVAL_ACTION_R1_SHUFFLED: 0.0625,
        K.EVAL_ACTION_CHANCE: 0.05,
        K.EVAL_ACTION_MRR: 0.75,
        K.EVAL_PLAN_SUCCESS: {"1": 1.0, "2": 0.375},
        K.EVAL_PLAN_CI: {"1": [0.9, 1.0], "2": [0.25, 0.5]},
        K.EVAL_PLAN_SUCCESS_RANDOM: {"1": 0.125, "2": 0.0},
        K.EVAL_PLAN_DISTINCT_PAIRS: {"1": 40, "2": 50},
        K.EVAL_PLAN_BUDGET_SLACK: 0,
        K.EVAL_PLAN_SECONDS: 12.5,
        K.EVAL_PLAN_TRIALS: 50,
        K.EVAL_ROLLOUT_L2: [0.5, 0.75],
        K.EVAL_ROLLOUT_L2_COPY: [1.5, 2.0],
        K.EVAL_SURPRISE_AUROC_HARD: 0.96,
        K.EVAL_SURPRISE_AUROC_HARD_COPY: 0.5,
        K.EVAL_SURPRISE_AUROC_HARD_SHUFFLED: 0.51,
        K.TRAINABLE_PARAMS: 10,
        K.TOTAL_PARAMS: 1000,
        K.TRAINABLE_FRACTION: 0.01,
    }
    (tmp_path / K.RESULT_FILE).write_text(json.dumps(result))
    (tmp_path / K.RECIPE_FILE).write_text("task: world_model\ncorpus: {seed: 21}\n")
    card = ModelCard.load(write_model_card(tmp_path, "me/m"))
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics == {
        K.EVAL_PRED_MSE: 0.25,
        K.EVAL_COPY_MSE: 4.0,
        K.EVAL_ACTION_R1: 0.625,
        K.EVAL_SURPRISE_AUROC_HARD: 0.96,
    }
    assert {r.dataset_name for r in card.data.eval_results} == {
        "graph walks (small preset, corpus seed 21)"
    }
    text = card.text
    assert "| `eval_pred_mse` / `eval_copy_mse` | 0.25 | 4 | 0.0625 |" in text
    assert "| before adaptation (the starting model on this data) | 3.5 | 4 | 0.875 |" in text
    assert "| `eval_action_r1` | 0.625 | 0.125 | 0.0625 | 0.05 |" in text
    # Planning by distance with intervals and the random baseline; rollouts against copy;
    # surprise with its references. Timing and budget settings are not evaluation results.
    assert "| 2 | 0.375 | [0.25, 0.5] | 0 | - | - | 50 |" in text
    assert "| 1 | 0.5 | 1.5 | - | - |" in text and "| 2 | 0.75 | 2 | - | - |" in text
    assert "| hard negative (another valid neighbour) | 0.96 | 0.5 | 0.51 |" in text
    for key in (K.EVAL_PLAN_BUDGET_SLACK, K.EVAL_PLAN_SECONDS, K.EVAL_PLAN_TRIALS):
        assert key not in text, key
    assert "10 of 1,000 (1.00%)" in text
    assert "> [!WARNING]" not in text


def test_dna_cards_show_snv_edit_and_variant_numbers_with_chance(tmp_path):
    result = {
        "phase": "world_model",
        "curves": {},
        K.EVAL_PRED_MSE: 1.0,
        K.EVAL_COPY_MSE: 5.0,
        K.EVAL_SNV_RECOVERY_R1: 0.85,
        K.EVAL_SNV_RECOVERY_R1_COPY: 0.0,
        K.EVAL_SNV_RECOVERY_R1_SHUFFLED: 0.01,
        K.EVAL_SNV_RECOVERY_CHANCE: 0.005,
        K.EVAL_SNV_RECOVERY_CHANCE_PRIOR: 0.037,
        K.EVAL_EDIT_ACTION_R1: 0.64,
        K.EVAL_EDIT_ACTION_R1_COPY: 0.06,
        K.EVAL_EDIT_ACTION_R1_SHUFFLED: 0.07,
        K.EVAL_EDIT_ACTION_CHANCE: 0.057,
        K.EVAL_EDIT_ACTION_R1_CEILING: 0.92,
        K.EVAL_VARIANT_NUM_NONSENSE: 500,
        K.EVAL_VARIANT_NUM_SYNONYMOUS: 500,
        K.EVAL_VARIANT_AUROC_KMER: 0.73,
        K.EVAL_VARIANT_AUROC_KMER + K.CI_SUFFIX: [0.7, 0.76],
        K.EVAL_VARIANT_KMER_ORDER: 1,
        K.EVAL_VARIANT_AUROC_SURPRISE: 0.5,
        K.EVAL_VARIANT_AUROC_SURPRISE + K.CI_SUFFIX: [0.46, 0.53],
    }
    (tmp_path / K.RESULT_FILE).write_text(json.dumps(result))
    (tmp_path / K.RECIPE_FILE).write_text("task: edit_world_model\n")
    text = ModelCard.load(write_model_card(tmp_path, "me/dna")).text
    assert "| `eval_snv_recovery_r1` | 0.85 | 0 | 0.01 | 0.005 | 0.037 |" in text
    assert "| `eval_edit_action_r1` | 0.64 | 0.06 | 0.07 | 0.057 | 0.92 |" in text
    assert "500 nonsense against 500 synonymous" in text
    assert "| k-mer Markov baseline (order 1) | 0.73 | [0.7, 0.76] |" in text
    assert "| world-model surprise | 0.5 | [0.46, 0.53] |" in text
    # The encoder phase's card shows its own variant-effect row.
    lm = {"phase": "encoder", "curves": {}, "final_eval_loss": 1.3}
    lm.update({K.EVAL_VARIANT_AUROC_LM: 0.73, K.EVAL_VARIANT_AUROC_LM + K.CI_SUFFIX: [0.7, 0.76]})
    (tmp_path / K.RESULT_FILE).write_text(json.dumps(lm))
    (tmp_path / K.RECIPE_FILE).write_text("task: dna_lm\n")
    text = ModelCard.load(write_model_card(tmp_path, "me/dna-lm")).text
    assert "| DNA LM log-likelihood ratio | 0.73 | [0.7, 0.76] |" in text
