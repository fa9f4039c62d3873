"""Edits on token windows, synthetic edit samplers, edit trajectories, their action coding and
the edit corpus.

One module per concern:

- `ops`: the edit type (`Edit`, `EditOp`), `apply_edits` on one window, `map_locus` and
  `footprints`;
- `batched`: one edit per window as arrays (`EditBatch`) and `apply_edit_batch`;
- `sampling`: synthetic SNVs, MNVs and indels (`EditSampler`);
- `trajectories`: `K` edits per window around one locus (`sample_trajectories`);
- `actions`: edits as model action tensors (`edits_to_actions`, `code_edit_actions`);
- `corpus`: the genome and its windows (`DNASourceConfig`, the cached `build_window_corpus`), the cached edit corpus (`EditCorpusConfig`, `build_edit_corpus`, `edits_from_row`).

The public names of every module are re-exported here.
"""

from .actions import (
    PositionOrigin,
    code_edit_actions,
    edits_to_actions,
    locus_relative_positions,
    with_reference_tokens,
)
from .batched import EditBatch, apply_edit_batch
from .corpus import (
    EDIT_COLUMNS,
    DNASourceConfig,
    EditCorpusConfig,
    build_edit_corpus,
    build_window_corpus,
    edits_from_row,
    load_source_records,
)
from .ops import (
    DEFAULT_MAX_EDIT_LEN,
    Edit,
    EditOp,
    apply_edit,
    apply_edits,
    footprints,
    map_locus,
    pads_left,
    validate_edit,
)
from .sampling import (
    EditSampler,
    sample_indels,
    sample_mnvs,
    sample_snvs,
    truncated_geometric,
)
from .trajectories import EditTrajectories, sample_trajectories

__all__ = [
    "DEFAULT_MAX_EDIT_LEN",
    "EDIT_COLUMNS",
    "DNASourceConfig",
    "Edit",
    "EditBatch",
    "EditCorpusConfig",
    "EditOp",
    "EditSampler",
    "EditTrajectories",
    "PositionOrigin",
    "apply_edit",
    "apply_edit_batch",
    "apply_edits",
    "build_edit_corpus",
    "build_window_corpus",
    "code_edit_actions",
    "edits_from_row",
    "edits_to_actions",
    "footprints",
    "load_source_records",
    "locus_relative_positions",
    "map_locus",
    "pads_left",
    "sample_indels",
    "sample_mnvs",
    "sample_snvs",
    "sample_trajectories",
    "truncated_geometric",
    "validate_edit",
    "with_reference_tokens",
]
