"""The edit corpus: region-split DNA windows with edit trajectories, written to the corpus cache.

`EditCorpusConfig` defines a corpus (every field is part of its cache key), `build_edit_corpus`
builds or loads it, and `edits_from_row` reads the edits of one of its rows back.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import DatasetDict

from ... import metric_keys as K
from ...determinism import derive_seed
from ...errors import LeWMConfigError, LeWMInputError
from ...fields import IupacPolicy, option, validate_fields
from ...progress import progress
from .. import corpus as corpus_cache
from ..dna import (
    DNA_EDIT_ALPHABET,
    N_ID,
    DNAWindows,
    FastaRecord,
    packaged_genome_path,
    read_fasta,
    split_region,
    split_windows,
    synthetic_records,
)
from .ops import DEFAULT_MAX_EDIT_LEN, Edit
from .sampling import EditSampler
from .trajectories import EditTrajectories, sample_trajectories

# Columns of an edit-corpus row that `DataCollatorForLeWM` reads (`record` and `start` are
# provenance only).
EDIT_COLUMNS = ("input_ids", "edit_ops", "edit_positions", "edit_tokens", "locus")


def edits_from_row(row: dict[str, Any]) -> list[Edit]:
    """The edits of an edit-corpus row (`edit_ops`, `edit_positions`, `edit_tokens`)."""
    ops, positions, tokens = row["edit_ops"], row["edit_positions"], row["edit_tokens"]
    if not len(ops) == len(positions) == len(tokens):
        raise LeWMInputError(
            "edit_ops", (len(ops), len(positions), len(tokens)), "edit columns differ in length"
        )
    return [Edit(int(o), int(p), t) for o, p, t in zip(ops, positions, tokens)]


@dataclass
class DNASourceConfig:
    """A genome and its windows: what both DNA phases read (the encoder phase's whole corpus).

    Args:
        fasta_path (`str`, *optional*): FASTA file (plain or gzip) of the source genome.
        genome (`str`, *optional*): A genome shipped by an installed package
            (`dna.PACKAGED_GENOMES`, e.g. `"c_diphtheriae_100kb"`), instead of `fasta_path`.
            With neither, the synthetic genome of `dna.synthetic_genome` is used.
        synthetic_records (`int`, defaults to 4): Records of the synthetic genome.
        synthetic_length (`int`, defaults to 50000): Bases per synthetic record.
        iupac (`str`, defaults to `"error"`): IUPAC codes in the FASTA: `"error"` or `"n"`.
        window_length (`int`, defaults to 128): Window L.
        window_stride (`int`, defaults to 64): Offset between source windows.
        holdout_fraction (`float`, defaults to 0.1): Last fraction of each record held out for
            `validation`.
        max_n_fraction (`float`, defaults to 0.1): Windows with more N are dropped.
        seed (`int`, defaults to 0): Base seed (synthetic genome, phases, subsets, edits).
    """

    # Parameters that control the source genome
    fasta_path: str | None = option(None, help="FASTA file (plain or gzip) of the genome.")
    genome: str | None = option(None, help="Genome shipped by an installed package.")
    synthetic_records: int = option(4, help="Synthetic genome: records.", low=1)
    synthetic_length: int = option(50_000, help="Synthetic genome: bases per record.", low=1)
    iupac: IupacPolicy = option("error", help="IUPAC codes: error, or n to read them as N.")

    # Parameters that control the windows
    window_length: int = option(128, help="Window length L.", low=1)
    window_stride: int = option(64, help="Offset between source windows.", low=1)
    holdout_fraction: float = option(
        0.1,
        help="Held-out fraction at each record's end.",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    max_n_fraction: float = option(0.1, help="Drop windows with more N.", low=0, high=1)
    seed: int = option(0, help="Base seed.", low=0)

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.fasta_path is not None and self.genome is not None:
            raise LeWMConfigError("genome", self.genome, "give fasta_path or genome, not both")
        if self.fasta_path is not None:
            self.fasta_path = str(self.fasta_path)

    def source_path(self) -> Path | None:
        """The FASTA file (None for the synthetic genome)."""
        if self.genome is not None:
            return packaged_genome_path(self.genome)
        if self.fasta_path is not None:
            path = Path(self.fasta_path)
            if not path.is_file():
                raise LeWMConfigError("fasta_path", self.fasta_path, "no such file")
            return path
        return None

    def cache_key(self) -> dict[str, Any]:
        """The fingerprinted content: every field plus the SHA-256 of the source file."""
        key = corpus_cache.config_to_dict(self)
        source = self.source_path()
        key["source_sha256"] = None if source is None else _file_sha256(source)
        return key


@dataclass
class EditCorpusConfig(DNASourceConfig):
    """Everything that defines an edit corpus: a `DNASourceConfig` and the edit trajectories
    cut from its windows. Every field is part of the cache key (with the SHA-256 of the FASTA
    file, so a changed file is a new corpus).

    Rows: a source window `s_0` (a region-split DNA window), `K` edits (`min_actions..
    max_actions`, uniform) drawn by an `EditSampler` clustered around one locus, and the windows
    `s_1 .. s_K` after each edit.

    Args:
        (the `DNASourceConfig` fields: the genome, its windows and the seed)
        min_actions (`int`, defaults to 1): Fewest edits per row.
        max_actions (`int`, defaults to 3): Most edits per row (at most the model's
            `history_length`).
        trajectories_per_window (`int`, defaults to 1): Trajectories drawn from each window.
        max_train_rows (`int`, *optional*): Cap on training rows (a random subset of windows).
        max_validation_rows (`int`, *optional*): Cap on validation rows.
        margin (`int`, defaults to 16): Edits and loci stay this far from the window edges.
            Edit positions lie in `[margin, window_length - margin]`, so the model's
            `max_action_position` must exceed `window_length`.
        cluster_radius (`int`, *optional*, defaults to 4): Edits meet `[locus - r, locus + r]`;
            at most the model's `pool_radius`. None: uniform positions.
        free_edit_fraction (`float`, defaults to 0.0): Fraction of edits drawn anywhere in the
            window (the locus kept `margin` from the edges) instead of near the locus, so that
            the model also sees edits that miss the pooled tokens. Needs `cluster_radius`.
        snv_weight, mnv_weight, indel_weight (`float`, defaults to 0.5, 0.1, 0.4): Edit mixture.
        indel_p (`float`, defaults to 0.5): Geometric parameter of indel lengths.
        max_indel_len (`int`, defaults to 15): Longest indel.
        mnv_min_len, mnv_max_len (`int`, defaults to 2, 8): MNV lengths.
        max_edit_len (`int`, defaults to 16): Longest edit accepted anywhere.
    """

    # Parameters that control the trajectories
    min_actions: int = option(1, help="Fewest edits per row.", low=1)
    max_actions: int = option(3, help="Most edits per row (<= history_length).", low=1)
    trajectories_per_window: int = option(1, help="Trajectories per window.", low=1)
    max_train_rows: int | None = option(None, help="Cap on training rows.", low=1)
    max_validation_rows: int | None = option(None, help="Cap on validation rows.", low=1)
    margin: int = option(16, help="Distance of edits and loci from the edges.", low=0)
    cluster_radius: int | None = option(4, help="Edits meet locus +- r (<= pool_radius).", low=1)
    free_edit_fraction: float = option(
        0.0, help="Fraction of edits drawn anywhere, not near the locus (0: none).", low=0, high=1
    )

    # Parameters that control the edits
    snv_weight: float = option(0.5, help="Weight of SNVs.", low=0)
    mnv_weight: float = option(0.1, help="Weight of MNVs.", low=0)
    indel_weight: float = option(0.4, help="Weight of indels.", low=0)
    indel_p: float = option(
        0.5, help="Geometric parameter of indel lengths.", low=0, high=1, low_open=True
    )
    max_indel_len: int = option(15, help="Longest indel.", low=1)
    mnv_min_len: int = option(2, help="Shortest MNV.", low=2)
    mnv_max_len: int = option(8, help="Longest MNV.", low=2)
    max_edit_len: int = option(DEFAULT_MAX_EDIT_LEN, help="Longest edit accepted.", low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_actions > self.max_actions:
            raise LeWMConfigError(
                "min_actions", self.min_actions, f"must be <= max_actions={self.max_actions}"
            )
        if self.free_edit_fraction > 0 and self.cluster_radius is None:
            raise LeWMConfigError(
                "free_edit_fraction",
                self.free_edit_fraction,
                "needs cluster_radius (without it every edit is drawn anywhere already)",
            )
        sampler = self.sampler()
        if sampler.longest > self.max_edit_len:
            raise LeWMConfigError(
                "max_edit_len",
                self.max_edit_len,
                f"is shorter than the longest sampled edit ({sampler.longest})",
            )
        sampler._check_window(self.window_length, sampler.longest)

    def sampler(self) -> EditSampler:
        """The `EditSampler` these fields define (DNA alphabet ACGT)."""
        return EditSampler(
            alphabet=DNA_EDIT_ALPHABET,
            margin=self.margin,
            snv_weight=self.snv_weight,
            mnv_weight=self.mnv_weight,
            indel_weight=self.indel_weight,
            indel_p=self.indel_p,
            max_indel_len=self.max_indel_len,
            mnv_min_len=self.mnv_min_len,
            mnv_max_len=self.mnv_max_len,
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source_records(config: DNASourceConfig) -> tuple[list[FastaRecord], str]:
    """The records a DNA corpus is cut from, and a name of their source for messages."""
    path = config.source_path()
    if path is None:
        records = synthetic_records(
            num_records=config.synthetic_records,
            record_length=config.synthetic_length,
            seed=derive_seed(config.seed, "synthetic-genome"),
        )
        return records, "synthetic genome"
    return list(read_fasta(path, iupac=config.iupac)), str(path)


def load_source_windows(
    config: DNASourceConfig,
) -> tuple[list[FastaRecord], str, dict[str, Any]]:
    """The source records, their name, and their windows split by region (`dna.split_windows`:
    the last `holdout_fraction` of each record is `validation`), seeded from `config.seed`.

    Both DNA corpora start here: the encoder phase's LM rows and the edit corpus's source
    windows are the same windows.
    """
    records, source = load_source_records(config)
    windows = split_windows(
        records,
        config.window_length,
        config.window_stride,
        config.holdout_fraction,
        seed=derive_seed(config.seed, "phases"),
        max_n_fraction=config.max_n_fraction,
        source=source,
    )
    return records, source, windows


def build_edit_corpus(
    config: EditCorpusConfig | None = None, cache_dir: str | Path | None = None
) -> DatasetDict:
    """Build (or load from the cache) an edit-trajectory corpus.

    Splits `train` and `validation` (by region: the last `holdout_fraction` of every record is
    validation, 0 bp shared). Columns per row, ragged in `K`:

    - `input_ids`: `(K + 1, L)` token ids of `s_0 .. s_K` (ids of `dna.DNA_VOCAB`);
    - `edit_ops`, `edit_positions`: `(K,)` (`EditOp` values; edit `k`'s position in `s_k`);
    - `edit_tokens`: `K` lists, the new tokens (`SUB`, `INS`) or deleted reference (`DEL`);
    - `locus`: `(K + 1,)` the trajectory's site in each state;
    - `record`, `start`: the source window's record index and 0-based offset.

    `regions.json` beside the data lists every record with its training and validation regions.
    Collate with `DataCollatorForLeWM` (edit-row form).

    Args:
        config (`EditCorpusConfig`, *optional*): Defaults (synthetic genome) if None.
        cache_dir (`str` or `Path`, *optional*): Cache root (see `corpus.default_cache_dir`).

    Returns:
        `DatasetDict`: Memory-mapped splits.
    """
    config = config if config is not None else EditCorpusConfig()
    key = config.cache_key()
    folder = corpus_cache.cached_build(
        "edits", key, functools.partial(_write_edit_corpus, config), cache_dir
    )
    return corpus_cache.load_corpus(folder)


# Windows per vectorised trajectory batch (bounds the (N, K + 1, L) int64 states), and per
# chunk the corpus is written in.
TRAJECTORY_CHUNK = 4096
# LM rows (windows) per chunk of the window corpus.
WINDOW_CHUNK = 65536


def build_window_corpus(
    config: DNASourceConfig, cache_dir: str | Path | None = None
) -> DatasetDict:
    """Build (or load from the cache) the encoder phase's LM rows: the source windows.

    Splits `train` and `validation` (by region, as `load_source_windows`), one column
    `input_ids` (`window_length` int32 token ids per row). Written to the corpus cache in
    chunks of `WINDOW_CHUNK` windows and read back memory-mapped, so the rows never exist as
    Python lists or as one in-memory table; they equal `Dataset.from_dict` of the windows.

    Args:
        config (`DNASourceConfig`): The genome and its windows.
        cache_dir (`str` or `Path`, *optional*): Cache root (see `corpus.default_cache_dir`).

    Returns:
        `DatasetDict`: Memory-mapped splits.
    """
    folder = corpus_cache.cached_build(
        "dna_windows",
        config.cache_key(),
        functools.partial(_write_window_corpus, config),
        cache_dir,
    )
    return corpus_cache.load_corpus(folder)


def _write_window_corpus(config: DNASourceConfig, folder: Path) -> None:
    """Write the source windows into `folder` (called by the cache inside a temporary folder)."""
    _, _, windows = load_source_windows(config)

    def tables(ids: np.ndarray):
        for at in range(0, len(ids), WINDOW_CHUNK):
            chunk = np.ascontiguousarray(ids[at : at + WINDOW_CHUNK], dtype=np.int32)
            offsets = np.arange(0, chunk.size + 1, chunk.shape[1], dtype=np.int32)
            column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(chunk.reshape(-1)))
            yield pa.table({"input_ids": column})

    corpus_cache.write_split_tables(
        folder / corpus_cache.DATA_SUBDIR,
        {split: tables(win.ids) for split, win in windows.items()},
    )


def _write_edit_corpus(config: EditCorpusConfig, folder: Path) -> None:
    """Generate an edit corpus into `folder` (called by the cache inside a temporary folder).

    Each split is sampled and written `TRAJECTORY_CHUNK` windows at a time (the draws are
    those of one pass over the split), so the corpus is never held whole in memory.
    """
    records, source, windows = load_source_windows(config)
    sampler = config.sampler()
    caps = {"train": config.max_train_rows, "validation": config.max_validation_rows}

    def tables(split: str, win: DNAWindows):
        rng = np.random.default_rng(derive_seed(config.seed, f"edits-{split}"))
        rows = np.repeat(np.arange(len(win)), config.trajectories_per_window)
        if caps[split] is not None and caps[split] < len(rows):
            rows = rows[np.sort(rng.choice(len(rows), size=caps[split], replace=False))]
        num_steps = rng.integers(config.min_actions, config.max_actions + 1, size=len(rows))
        for at in progress(range(0, len(rows), TRAJECTORY_CHUNK), desc=f"edits {split}"):
            chunk = rows[at : at + TRAJECTORY_CHUNK]
            traj = sample_trajectories(
                win.ids[chunk],
                config.max_actions,
                rng,
                sampler,
                config.cluster_radius,
                N_ID,
                config.free_edit_fraction,
            )
            table = _trajectory_table(traj, num_steps[at : at + TRAJECTORY_CHUNK])
            table = table.append_column("record", pa.array(win.record[chunk].astype(np.int32)))
            yield table.append_column("start", pa.array(win.start[chunk].astype(np.int64)))

    corpus_cache.write_split_tables(
        folder / corpus_cache.DATA_SUBDIR,
        {split: tables(split, win) for split, win in windows.items()},
    )
    regions = []
    for record in records:
        _, cut, end = split_region(len(record), config.holdout_fraction)
        regions.append(
            {
                "name": record.name,
                "description": record.description,
                "length": end,
                "train": [0, cut],
                "validation": [cut, end],
            }
        )
    (folder / K.REGIONS_FILE).write_text(json.dumps({"source": source, "records": regions}))


def _ragged(values: np.ndarray, counts: np.ndarray) -> pa.Array:
    """A list array whose row `i` holds `values[i, :counts[i]]` (values `(N, T, ...)`)."""
    keep = np.arange(values.shape[1])[None, :] < counts[:, None]  # (N, T)
    flat = values[keep]  # (sum counts, ...)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    if flat.ndim == 1:
        inner: pa.Array = pa.array(flat.astype(np.int32))
    else:
        inner = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(flat, dtype=np.int32).reshape(-1)), flat.shape[1]
        )
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _trajectory_table(traj: EditTrajectories, num_steps: np.ndarray) -> pa.Table:
    """Arrow columns of trajectories truncated to `num_steps` edits each."""
    steps = num_steps.astype(np.int64)
    # edit_tokens: list (per row) of list (per edit) of tokens.
    keep = np.arange(traj.ops.shape[1])[None, :] < steps[:, None]  # (N, K)
    lengths = traj.lengths[keep]  # (E,)
    tokens = traj.tokens[keep]  # (E, M)
    flat = tokens[np.arange(tokens.shape[1])[None, :] < lengths[:, None]]
    inner = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(flat.astype(np.int32)),
    )
    edit_tokens = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(steps)]).astype(np.int32)), inner
    )
    return pa.table(
        {
            "input_ids": _ragged(traj.states, steps + 1),
            "edit_ops": _ragged(traj.ops, steps),
            "edit_positions": _ragged(traj.positions, steps),
            "edit_tokens": edit_tokens,
            "locus": _ragged(traj.locus, steps + 1),
        }
    )


__all__ = [
    "EDIT_COLUMNS",
    "DNASourceConfig",
    "EditCorpusConfig",
    "build_edit_corpus",
    "build_window_corpus",
    "edits_from_row",
    "load_source_records",
    "load_source_windows",
]
