"""`ActionInputs`: shape checks naming the field, the Mapping protocol that lets the Trainer,
accelerate and torch move a batch holding it, and the model's errors about its `actions`."""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace

import pytest
import torch
from _builders import tiny_lewm_config, tiny_lewm_model
from accelerate.utils import concatenate, send_to_device
from test_modeling import MODEL, B, T, make_batch
from torch.distributed.utils import _apply_to_tensors
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_pt_utils import find_batch_size

from lewm_hf import ActionInputs, DataCollatorForLeWM, LeWMInputError
from lewm_hf.modeling_lewm import check_input_values

IDS = torch.zeros(B, T, dtype=torch.long)
TOKENS = torch.zeros(B, T, 4, dtype=torch.long)


def tiny_config(**overrides) -> object:
    """`test_modeling`'s tiny model config, with overrides."""
    return tiny_lewm_config(**{**MODEL, **overrides})


def tiny_model(**overrides) -> object:
    """`test_modeling`'s tiny model (seed 0), with overrides."""
    return tiny_lewm_model(**{**MODEL, **overrides})


def edit_actions() -> ActionInputs:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 1:] = False
    return ActionInputs(
        tokens=torch.randint(0, 8, (B, T, 4), generator=g),
        token_mask=torch.rand(B, T, 4, generator=g) > 0.3,
        ops=torch.randint(0, 3, (B, T), generator=g),
        positions=torch.randint(0, 32, (B, T), generator=g),
        mask=mask,
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "actions.ids"),
        ({"ids": IDS[0]}, "actions.ids"),
        ({"ids": IDS.float()}, "actions.ids"),
        ({"ids": IDS, "tokens": TOKENS}, "actions.ids"),
        ({"tokens": IDS}, "actions.tokens"),
        ({"ids": IDS, "mask": IDS[:, :2]}, "actions.mask"),
        ({"ids": IDS, "ops": IDS[:1]}, "actions.ops"),
        ({"ids": IDS, "positions": IDS.float()}, "actions.positions"),
        ({"tokens": TOKENS, "token_mask": TOKENS[..., :2]}, "actions.token_mask"),
        ({"ids": IDS, "token_mask": TOKENS}, "actions.token_mask"),  # (B, T, 1) with ids
        ({"ids": [[0]]}, "actions.ids"),
    ],
)
def test_bad_shapes_name_the_field(kwargs, field):
    with pytest.raises(LeWMInputError) as err:
        ActionInputs(**kwargs)
    assert err.value.field == field


def test_mapping_of_the_fields_given_rebuilds_itself():
    actions = edit_actions()
    assert list(actions) == ["mask", "ops", "positions", "tokens", "token_mask"]
    assert len(actions) == 5 and "ids" not in actions and actions.shape == (B, T)
    rebuilt = ActionInputs(dict(actions))
    assert all(rebuilt[name] is actions[name] for name in actions)
    assert actions == actions and rebuilt != actions  # identity, never a tensor comparison
    flat = actions.to_batch()
    assert sorted(flat) == sorted(f"action_{name}" for name in actions)
    again = ActionInputs.from_batch({**flat, "input_ids": IDS})
    assert all(again[name] is actions[name] for name in actions)
    part = actions.select(slice(1, 3), slice(0, 2))
    assert part.shape == (2, 2) and torch.equal(part.tokens, actions.tokens[1:3, :2])
    with pytest.raises(LeWMInputError) as err:
        ActionInputs({"idz": IDS})
    assert err.value.field == "actions"
    with pytest.raises(LeWMInputError):
        ActionInputs({"ids": IDS}, mask=IDS.bool())


def test_batches_survive_the_container_walkers_of_trainer_accelerate_and_torch():
    """Each walks Mappings (not dataclasses) and rebuilds them as `type(m)({...})`."""
    batch = {"input_ids": torch.zeros(B, T + 1, 2, dtype=torch.long), "actions": edit_actions()}
    fake_trainer = SimpleNamespace(args=SimpleNamespace(device=torch.device("cpu")))
    fake_trainer.is_deepspeed_enabled = False
    fake_trainer._prepare_input = lambda data: Trainer._prepare_input(fake_trainer, data)
    walked = [
        Trainer._prepare_input(fake_trainer, batch),
        send_to_device(batch, "cpu", non_blocking=True),
        _apply_to_tensors(lambda t: t.clone(), batch),  # FSDP's input casting
        dataclasses.replace(batch["actions"]),
        pickle.loads(pickle.dumps(batch)),  # to and from data-loader worker processes
    ]
    for out in walked:
        actions = out if isinstance(out, ActionInputs) else out["actions"]
        assert isinstance(actions, ActionInputs) and list(actions) == list(batch["actions"])
        for name, value in batch["actions"].items():
            assert torch.equal(actions[name], value)
    joined = concatenate([batch, batch])  # accelerate's dispatching data loader
    assert joined["actions"].shape == (2 * B, T)
    assert find_batch_size({"actions": batch["actions"]}) == B
    if torch.cuda.is_available():  # pinning needs an accelerator
        from torch.utils.data._utils.pin_memory import pin_memory

        assert pin_memory(batch)["actions"].tokens.is_pinned()


def test_collated_batches_through_a_data_loader_reach_the_model():
    rows = [{"input_ids": [[1, 2], [3, 4], [5, 6]], "actions": [1, 2]}] * 2
    rows.append({"input_ids": [[1, 2], [3, 4]], "actions": [3]})
    loader = DataLoader(rows, batch_size=3, collate_fn=DataCollatorForLeWM())
    (batch,) = list(loader)
    assert isinstance(batch["actions"], ActionInputs)
    assert batch["actions"].mask.tolist() == [[True, True], [True, True], [True, False]]
    model = tiny_model(history_length=2).eval()
    with torch.no_grad():
        out = model(**batch)
    assert out.predictions.shape == (3, 2, 16)


def test_model_errors_name_the_actions():
    model = tiny_model()
    batch = make_batch()
    cases = [
        ({**batch, "actions": None}, "actions"),
        ({**batch, "actions": {"ids": IDS}}, "actions"),  # a plain dict is no ActionInputs
        ({**batch, "actions": ActionInputs(ids=IDS[:, :2])}, "actions"),  # T + 1 states
        ({**batch, "actions": ActionInputs(ids=IDS[:2])}, "actions"),
        ({**batch, "actions": ActionInputs(ids=IDS + 8)}, "actions.ids"),
        ({**batch, "actions": ActionInputs(ids=IDS, ops=IDS + 1)}, "actions.ops"),
    ]
    for kwargs, field in cases:
        with pytest.raises(LeWMInputError) as err:
            model(**kwargs)
        assert err.value.field == field, kwargs
    with pytest.raises(LeWMInputError) as err:
        model.predict(torch.zeros(B, T, 16))
    assert err.value.field == "actions"
    with pytest.raises(LeWMInputError) as err:
        model.encode_actions(IDS)
    assert err.value.field == "actions"


def test_host_checks_raise_what_the_forward_would():
    config = tiny_config(num_action_ops=3, max_action_position=32)
    check_input_values(config, {"actions": edit_actions()})
    holes = dataclasses.replace(edit_actions(), mask=torch.tensor([[False, True, True]] * B))
    bad_position = dataclasses.replace(edit_actions(), positions=torch.full((B, T), 32))
    for actions, field in ((holes, "actions.mask"), (bad_position, "actions.positions")):
        with pytest.raises(LeWMInputError) as err:
            check_input_values(config, {"actions": actions})
        assert err.value.field == field
        with pytest.raises(LeWMInputError) as err:
            tiny_model(num_action_ops=3, max_action_position=32)(
                **{**make_batch(), "actions": actions}
            )
        assert err.value.field == field
