"""Domains of the world-model runner: what differs between kinds of trajectory data.

`lewm_hf.tasks.world_model` is the one world-model runner (arguments -> data -> model -> trainer
-> train -> save -> evaluate -> report -> publish). What differs between graph walks and DNA
edits is a small object it is given, a `WorldModelDomain`:

- which recipe targets the data and the evaluation read (`targets`, `owners`);
- how trajectories are built (`build_data`) and how actions reach the model (`trainer_kwargs`:
  the collator, the tokenizer saved beside the model);
- the `LeWMConfig` defaults and constraints of its actions (`config_defaults`,
  `check_config`);
- which evaluation runs (`evaluate`, `before_evaluation`);
- optionally, `fit_data(model, args, data) -> WorldModelData`: the rows fitted to the built
  model, called once it exists (the trajectory domain cuts long rows into clips of the
  model's `history_length`).

A new kind of trajectory data is a new domain and one line in `lewm_hf.tasks.TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from datasets import Dataset

from ...configuration_lewm import LeWMConfig
from ...trainer.lewm_config import LeWMTrainingArguments


@dataclass
class WorldModelData:
    """The trajectories of a world-model phase.

    Args:
        train (`Dataset`): Training rows.
        validation (`Dataset`): Held-out rows (evaluation during and after training).
        info (`Any`, *optional*): What the domain's evaluation needs besides the rows (the
            walks' graph and jumpers).
        summary (`dict`, defaults to `{}`): Sizes reported in the phase summary.
    """

    train: Dataset
    validation: Dataset
    info: Any = None
    summary: dict[str, Any] = field(default_factory=dict)


class WorldModelDomain(Protocol):
    """What the world-model runner needs to know about one kind of trajectory data.

    Attributes:
        name (`str`): The task name it is registered under (`world_model`, `edit_world_model`).
        description (`str`): A few words for logs (`"move trajectories"`).
        targets (`dict[str, type]`): Its recipe targets (the data and the evaluation); the
            runner adds `model`, `config` and `training`.
        owners (`dict[str, str]`): The owner of any key two targets declare.
        help_defaults (`dict[str, Any]`): The `LeWMConfig` defaults it sets otherwise than the
            class, as `--help` shows them.
    """

    name: str
    description: str
    targets: dict[str, type]
    owners: dict[str, str]
    help_defaults: dict[str, Any]

    def parse(self, parts: dict[str, dict[str, Any]], training: LeWMTrainingArguments) -> Any:
        """Build (and so validate) the domain's arguments from the keys its targets own.

        The result has an `evaluation` attribute with a `run_evaluation` flag.
        """

    def config_defaults(
        self, args: Any, config: dict[str, Any], data: WorldModelData | None
    ) -> dict[str, Any]:
        """`LeWMConfig` defaults of a new model of this domain, given the recipe's own config
        keys (`config`) and, once built, the data (None while the recipe is parsed)."""

    def fresh_vocab_size(self, data: WorldModelData) -> int:
        """The state vocabulary of an encoder built from scratch (no `encoder_path`)."""

    def check_config(self, config: LeWMConfig, args: Any, data: WorldModelData | None) -> None:
        """Raise `LeWMConfigError` when `config` (new or loaded) cannot read this domain's
        trajectories (`data` None: the checks that need no data)."""

    def action_vocab_needed(self, args: Any, data: WorldModelData) -> int | None:
        """Optional: the action vocabulary the data needs, when a saved model with fewer action
        ids may grow to it (`grow_action_vocab`); a domain without this method (or returning
        None) has a fixed action vocabulary, and `check_config` rejects a model too small."""

    def build_data(self, args: Any) -> WorldModelData:
        """Build (or load from the cache) the phase's trajectories."""

    def trainer_kwargs(self, model: Any, args: Any, data: WorldModelData) -> dict[str, Any]:
        """Extra `LeWMTrainer` arguments: the collator, the processing class, the window."""

    def before_evaluation(self, model: Any, args: Any, data: WorldModelData) -> dict[str, Any]:
        """The cheap evaluation of a saved model before it trains on (`before_eval_*`)."""

    def evaluate(self, model: Any, args: Any, data: WorldModelData) -> dict[str, Any]:
        """The domain's evaluation of the trained model (`eval_*` keys)."""


__all__ = ["WorldModelData", "WorldModelDomain"]
