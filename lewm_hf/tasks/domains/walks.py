"""The walk domain (task `world_model`): move clips on a walk corpus's graph.

States are windows of a walk, actions the rank of the chosen out-neighbour (one action token,
no operation or position), and the evaluation is the world-model suite of
`lewm_hf.evaluation.suite` (action discrimination, rollouts, surprise, planning on the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ... import metric_keys as K
from ...configuration_lewm import LeWMConfig
from ...data.walks import MoveTrajectoryConfig, build_move_trajectories, load_walk_metadata
from ...errors import LeWMConfigError
from ...evaluation.suite import EvaluationArguments, run_evaluation_suite
from ...evaluation.world_model import evaluate_world_model
from ...trainer.lewm_config import LeWMTrainingArguments
from ..arguments import WalkCorpusArguments
from . import WorldModelData

# `LeWMConfig` keys of edit actions: a move is one token, with no operation and no position.
# (Their defaults are what a move needs; any other value would be accepted and never used.)
MOVE_ACTION_FIXED = {
    "num_action_ops": 1,
    "action_position_origin": "window",
    "action_reference_offset": None,
}


@dataclass
class WalkArguments:
    """The walk domain's arguments.

    Args:
        data (`WalkCorpusArguments`): The walk corpus.
        clips (`MoveTrajectoryConfig`): The move clips (its `history_length` is the model's).
        evaluation (`EvaluationArguments`): The evaluation suite's settings.
    """

    data: WalkCorpusArguments
    clips: MoveTrajectoryConfig
    evaluation: EvaluationArguments


class WalkDomain:
    """Move clips of graph walks (see the module docstring)."""

    name = "world_model"
    description = "move trajectories"
    targets: ClassVar[dict[str, type]] = {
        "data": WalkCorpusArguments,
        "clips": MoveTrajectoryConfig,
        "evaluation": EvaluationArguments,
    }
    # The corpus is chosen by the corpus keys (the clips' `corpus` field is filled from them),
    # and the clips' history length is the model's.
    owners: ClassVar[dict[str, str]] = {"corpus": "data", "history_length": "clips"}
    help_defaults: ClassVar[dict[str, Any]] = {
        "action_vocab_size": "the graph's largest out-degree"
    }

    def parse(
        self, parts: dict[str, dict[str, Any]], training: LeWMTrainingArguments
    ) -> WalkArguments:
        data = WalkCorpusArguments(**parts["data"])
        return WalkArguments(
            data=data,
            clips=MoveTrajectoryConfig(corpus=data.corpus_config(), **parts["clips"]),
            evaluation=EvaluationArguments(**parts["evaluation"]),
        )

    def config_defaults(
        self, args: WalkArguments, config: dict[str, Any], data: WorldModelData | None
    ) -> dict[str, Any]:
        defaults: dict[str, Any] = {"history_length": args.clips.history_length}
        if data is not None:  # one action token per out-neighbour rank
            defaults["action_vocab_size"] = data.info.graph.max_out_degree
        return defaults

    def fresh_vocab_size(self, data: WorldModelData) -> int:
        return data.info.graph.num_vertices

    def check_config(
        self, config: LeWMConfig, args: WalkArguments, data: WorldModelData | None
    ) -> None:
        for key, value in MOVE_ACTION_FIXED.items():
            if getattr(config, key) != value:
                raise LeWMConfigError(
                    key,
                    getattr(config, key),
                    f"walk actions are neighbour ranks, one token each: {key} must be {value!r} "
                    "(it codes edit actions)",
                )
        if config.pooling == "centered":
            raise LeWMConfigError(
                "pooling", config.pooling, "walk states have no locus: use last or mean"
            )
        if config.history_length != args.clips.history_length:
            raise LeWMConfigError(
                "history_length",
                args.clips.history_length,
                f"the model was built with history_length={config.history_length}",
            )
        if data is not None and config.action_vocab_size < data.info.graph.max_out_degree:
            raise LeWMConfigError(
                "action_vocab_size",
                config.action_vocab_size,
                f"the graph has out-degree up to {data.info.graph.max_out_degree}: start from "
                "the saved model with grow_action_vocab: true (its default), or train a new "
                "model",
            )

    def action_vocab_needed(self, args: WalkArguments, data: WorldModelData) -> int:
        """One action id per out-neighbour rank: the graph's largest out-degree (a saved model
        with fewer action ids may grow to it)."""
        return data.info.graph.max_out_degree

    def build_data(self, args: WalkArguments) -> WorldModelData:
        clips = build_move_trajectories(args.clips, args.data.corpus_cache_dir)
        return WorldModelData(
            train=clips["train"],
            validation=clips["validation"],
            info=load_walk_metadata(clips),
            summary={K.TRAIN_CLIPS: len(clips["train"]), K.EVAL_CLIPS: len(clips["validation"])},
        )

    def trainer_kwargs(
        self, model: Any, args: WalkArguments, data: WorldModelData
    ) -> dict[str, Any]:
        return {"window": args.clips.corpus.context_window}

    def before_evaluation(
        self, model: Any, args: WalkArguments, data: WorldModelData
    ) -> dict[str, Any]:
        if not args.evaluation.run_evaluation:
            return {}
        metrics = evaluate_world_model(model, data.info, args.evaluation.configs()[0])
        return {k: v for k, v in metrics.items() if k.startswith(K.EVAL_ACTION_PREFIX)}

    def evaluate(self, model: Any, args: WalkArguments, data: WorldModelData) -> dict[str, Any]:
        return run_evaluation_suite(model, data.info, args.evaluation)


WALKS = WalkDomain()

__all__ = ["MOVE_ACTION_FIXED", "WALKS", "WalkArguments", "WalkDomain"]
