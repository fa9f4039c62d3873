"""lewm_hf: action-conditioned JEPA world models (LeWM) on the Hugging Face stack.

Importing the package registers the `lewm` model type with `AutoConfig` and `AutoModel`.
"""

from .configuration_lewm import LeWMConfig
from .data.collators import DataCollatorForLeWM, DataCollatorForWalkLM
from .data.walks import (
    MoveTrajectoryConfig,
    WalkCorpusConfig,
    build_move_trajectories,
    build_walk_corpus,
    load_walk_metadata,
)
from .errors import (
    LeWMCollapseError,
    LeWMConfigError,
    LeWMDependencyError,
    LeWMError,
    LeWMGraphError,
    LeWMInputError,
    LeWMNonFiniteLossError,
)
from .modeling_actions import ActionInputs
from .modeling_lewm import LeWMModel, LeWMOutput
from .trainer.lewm_config import LeWMTrainingArguments, WalkLMTrainingArguments
from .trainer.lewm_trainer import LeWMTrainer, WalkLMTrainer

__version__ = "0.1.0"

__all__ = [
    "ActionInputs",
    "DataCollatorForLeWM",
    "DataCollatorForWalkLM",
    "LeWMCollapseError",
    "LeWMConfig",
    "LeWMConfigError",
    "LeWMDependencyError",
    "LeWMError",
    "LeWMGraphError",
    "LeWMInputError",
    "LeWMModel",
    "LeWMNonFiniteLossError",
    "LeWMOutput",
    "LeWMTrainer",
    "LeWMTrainingArguments",
    "MoveTrajectoryConfig",
    "WalkCorpusConfig",
    "WalkLMTrainer",
    "WalkLMTrainingArguments",
    "build_move_trajectories",
    "build_walk_corpus",
    "load_walk_metadata",
]
