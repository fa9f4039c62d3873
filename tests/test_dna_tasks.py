"""The DNA tasks (`dna_lm`, `edit_world_model`) and the edit evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import lewm_hf  # noqa: F401  (registers LeWMModel with AutoModel)
from lewm_hf import metric_keys as K
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.data.dna import DNA_END_ID, DNA_VOCAB_SIZE
from lewm_hf.data.edits.corpus import EditCorpusConfig, build_edit_corpus, edits_from_row
from lewm_hf.errors import LeWMConfigError
from lewm_hf.evaluation.edits import action_coding, snv_recovery
from lewm_hf.losses import prediction_loss
from lewm_hf.tasks.domains.edits import EditActionCollator
from lewm_hf.tasks.runner import run_recipe

RECIPE = """
output_dir: {out}
seed: 0
report_to: none
synthetic_records: 2
synthetic_length: 3000
window_length: 32
window_stride: 16
margin: 6
max_actions: 2
max_indel_len: 3
mnv_max_len: 3
corpus_cache_dir: {cache}
phases:
  - name: encoder
    task: dna_lm
    hidden_size: 16
    num_hidden_layers: 1
    num_attention_heads: 2
    intermediate_size: 32
    max_steps: 2
    per_device_train_batch_size: 8
    logging_steps: 1
    save_strategy: "no"
  - name: world_model
    task: edit_world_model
    encoder_path: previous
    history_length: 2
    d_state: 8
    projector_hidden: 16
    d_model: 16
    predictor_layers: 1
    predictor_heads: 2
    action_hidden: 8
    sigreg_num_slices: 16
    max_steps: 2
    per_device_train_batch_size: 8
    per_device_eval_batch_size: 64
    logging_steps: 1
    save_strategy: "no"
    collapse_monitor_steps: 0
    eval_items: 4
    eval_copy_items: 2
    eval_random_edits: 2
"""


def test_dna_edit_recipe_runs_and_reloads(tmp_path):
    path = tmp_path / "dna.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "out", cache=tmp_path / "cache"))
    summary = run_recipe(path)
    lm, wm = summary["phases"]["encoder"], summary["phases"]["world_model"]
    assert lm["task"] == "dna_lm" and np.isfinite(lm["final_eval_loss"])
    assert np.isfinite(lm["final_train_loss"])
    assert AutoTokenizer.from_pretrained(lm["model_path"]).convert_tokens_to_ids("A") == 0
    assert wm["encoder_path"] == lm["model_path"]
    for key in (
        K.EVAL_PRED_MSE,
        K.EVAL_COPY_MSE,
        K.EVAL_SNV_RECOVERY_R1,
        K.EVAL_SNV_RECOVERY_CHANCE,
        K.EVAL_SNV_RECOVERY_R1_COPY,
        K.EVAL_EDIT_ACTION_R1,
        K.EVAL_EDIT_ACTION_R1_COPY,
        K.EVAL_EDIT_ACTION_CHANCE,
    ):
        assert key in wm and np.isfinite(wm[key]), key

    # The saved model reloads, with its action coding, and reproduces eval_pred_mse on the
    # held-out rows.
    model = AutoModel.from_pretrained(wm["model_path"]).eval()
    assert action_coding(model) == ("locus", DNA_VOCAB_SIZE)
    config = EditCorpusConfig(
        synthetic_records=2,
        synthetic_length=3000,
        window_length=32,
        window_stride=16,
        margin=6,
        max_actions=2,
        max_indel_len=3,
        mnv_max_len=3,
        seed=0,
    )
    rows = build_edit_corpus(config, tmp_path / "cache")["validation"]
    collate = EditActionCollator(
        DataCollatorForLeWM(edit_end_token=DNA_END_ID), *action_coding(model)
    )
    mses = []
    with torch.inference_mode():
        for at in range(0, len(rows), 64):
            batch = collate([rows[i] for i in range(at, min(at + 64, len(rows)))])
            out = model(**batch)
            mask = batch["actions"].mask
            mses.append(prediction_loss(out.predictions, out.targets, mask, "mse"))
    assert torch.stack(mses).mean().item() == pytest.approx(wm[K.EVAL_PRED_MSE], rel=1e-4)


class _PerfectSNVModel(torch.nn.Module):
    """Latent = one-hot of the window's tokens; `predict` applies a SUB exactly."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(action_position_origin="window", action_reference_offset=None)

    def encode(self, input_ids, locus=None):
        return torch.nn.functional.one_hot(input_ids, 7).flatten(1).float()

    def predict(self, z_hist, actions):
        z = z_hist.view(*z_hist.shape[:2], -1, 7).clone()  # (B, T, L, 7)
        rows = torch.arange(z.shape[0])
        pos = actions.positions[:, -1]
        z[rows, -1, pos] = torch.nn.functional.one_hot(actions.tokens[:, -1, 0], 7).float()
        return z.flatten(2)


def test_snv_recovery_of_a_perfect_model_is_one():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 4, size=(12, 24))
    loci = np.full(12, 12)
    out = snv_recovery(_PerfectSNVModel(), windows, loci, radius=4, seed=1, copy_items=4)
    assert out[K.EVAL_SNV_RECOVERY_R1] == 1.0
    assert out[K.EVAL_SNV_RECOVERY_CHANCE] == pytest.approx(1 / (3 * 24))
    assert out[K.EVAL_SNV_RECOVERY_R1_COPY] < 1.0


class _CenteredPerfectSNVModel(torch.nn.Module):
    """A centered state that does not know its locus: the one-hot tokens at offsets `-r..r`
    from it. `predict` applies a SUB exactly, reading its offset from a locus-relative
    position; an edit outside the pooled tokens leaves the state as it is. It counts the
    actions whose reference token is not the base at their offset (`wrong_references`)."""

    def __init__(self, length: int, radius: int = 4):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.length, self.radius = length, radius
        self.wrong_references = 0
        self.config = SimpleNamespace(
            action_position_origin="locus", action_reference_offset=DNA_VOCAB_SIZE
        )

    def encode(self, input_ids, locus=None):
        at = locus[:, None] + torch.arange(-self.radius, self.radius + 1)  # (N, 2r + 1)
        return torch.nn.functional.one_hot(input_ids.gather(1, at), 7).flatten(1).float()

    def predict(self, z_hist, actions):
        z = z_hist[:, -1].view(z_hist.shape[0], -1, 7).clone()  # (B, 2r + 1, 7)
        offset = actions.positions[:, -1] - self.length  # pos - locus
        near = offset.abs() <= self.radius
        rows = torch.arange(z.shape[0])[near]
        slot = offset[near] + self.radius
        alt, ref = actions.tokens[near, -1, 0], actions.tokens[near, -1, 2] - DNA_VOCAB_SIZE
        self.wrong_references += int((z[rows, slot].argmax(-1) != ref).sum())
        z[rows, slot] = torch.nn.functional.one_hot(alt, 7).float()
        return z.flatten(1).unsqueeze(1)


def test_snv_recovery_codes_candidates_as_the_model_reads_them():
    # The model knows an edit's place only from a locus-relative position, so SNV recovery is
    # perfect only if the candidate actions are coded as its config says; with window
    # positions almost every candidate looks like an edit outside the pooled tokens.
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 4, size=(12, 32))
    loci = rng.integers(8, 24, size=12)
    model = _CenteredPerfectSNVModel(length=32)
    out = snv_recovery(model, windows, loci, radius=4, seed=1, copy_items=0)
    assert out[K.EVAL_SNV_RECOVERY_R1] == 1.0 and model.wrong_references == 0
    model.config.action_position_origin = "window"
    out = snv_recovery(model, windows, loci, radius=4, seed=1, copy_items=0)
    assert out[K.EVAL_SNV_RECOVERY_R1] < 0.2


def test_edit_action_collator_codes_training_actions_like_the_evaluation(tmp_path):
    config = EditCorpusConfig(
        synthetic_records=1, synthetic_length=2000, window_length=32, window_stride=16, margin=6
    )
    rows = build_edit_corpus(config, tmp_path)["train"]
    rows = [rows[i] for i in range(16)]
    actions = EditActionCollator(DataCollatorForLeWM(), "locus", DNA_VOCAB_SIZE)(rows)["actions"]
    for b, row in enumerate(rows):
        for k, edit in enumerate(edits_from_row(row)):
            assert actions.positions[b, k] == edit.pos - row["locus"][k] + 32
            tokens = actions.tokens[b, k][actions.token_mask[b, k]].tolist()
            written = [*edit.tokens, DNA_END_ID]
            if edit.op == 0:  # SUB: then the replaced bases of state k
                state = row["input_ids"][k]
                written += [t + DNA_VOCAB_SIZE for t in state[edit.pos : edit.pos + edit.length]]
            assert tokens == written


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("    pooling: mean", "action_position_origin"),
        ("    action_vocab_size: 7", "action_reference_offset"),
        ("    action_vocab_size: 12", "num_action_ops"),
        ("    num_action_ops: 2", "num_action_ops"),
        ("    action_reference_offset: 3", "action_reference_offset"),
        ("    max_action_position: 40", "max_action_position"),
    ],
)
def test_edit_action_coding_is_checked_before_training(tmp_path, line, field):
    recipe = RECIPE.format(out=tmp_path / "out", cache=tmp_path / "cache") + line + "\n"
    path = tmp_path / "dna.yaml"
    path.write_text(recipe)
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(path)
    assert info.value.field == field
