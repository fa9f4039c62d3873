"""DNA input: a streaming FASTA reader, windows split by region, a tokenizer, genomes shipped by
installed packages, and a deterministic synthetic genome.

Tokens. `A C G T N` are ids 0-4 (so a base's id is its index in `DNA_BASES`), `<pad>` is 5 and
`<end>` is 6: `<end>` closes every edit's action tokens (see `edits.edits_to_actions`), which
makes an edit's length visible to an action encoder that mean-pools its tokens. DNA windows are
never padded (target windows are filled with N, see `edits.apply_edits`), so `<pad>` only serves
batched tokenizer calls.

Characters. The reader folds lower case (soft-masked repeats) to upper case. `N` is allowed
in windows; the IUPAC ambiguity codes `R Y S W K M B D H V` are an error by default
(`iupac="error"`) or read as `N` (`iupac="n"`); anything else (`U`, `-`, `*`, digits, ...) is
always an error. Every error is a `LeWMDataError` naming the file, the record and the 1-based
offset in the record's sequence (and the line).
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import math
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..errors import LeWMConfigError, LeWMInputError
from ..fields import IupacPolicy, check_choice, choices, is_int_in

# ---- vocabulary -----------------------------------------------------------------------------
DNA_BASES = "ACGTN"
A_ID, C_ID, G_ID, T_ID, N_ID = range(5)
DNA_PAD_TOKEN = "<pad>"
DNA_END_TOKEN = "<end>"
DNA_PAD_ID = 5
DNA_END_ID = 6
DNA_VOCAB: dict[str, int] = {
    **{base: i for i, base in enumerate(DNA_BASES)},
    DNA_PAD_TOKEN: DNA_PAD_ID,
    DNA_END_TOKEN: DNA_END_ID,
}
DNA_VOCAB_SIZE = len(DNA_VOCAB)
# Bases an edit may write (never N).
DNA_EDIT_ALPHABET: tuple[int, ...] = (A_ID, C_ID, G_ID, T_ID)

IUPAC_AMBIGUITY = b"RYSWKMBDHV"
GZIP_MAGIC = b"\x1f\x8b"

_ALLOWED = b"ACGTN"
_WHITESPACE = b" \t\r\n\v\f"
# Byte -> token id (255: not a base).
_ID_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(_ALLOWED):
    _ID_LUT[_b] = _i


def _fold_table(iupac: IupacPolicy) -> bytes:
    """`bytes.translate` table: lower case to upper case, and IUPAC codes to N if asked."""
    table = bytearray(bytes(range(256)).upper())
    if iupac == "n":
        for code in IUPAC_AMBIGUITY:
            table[code] = ord("N")
            table[code + 32] = ord("N")  # lower case
    return bytes(table)


_FOLD_TABLES = {policy: _fold_table(policy) for policy in choices(IupacPolicy)}


class LeWMDataError(LeWMInputError):
    """A data file (FASTA) is malformed.

    Args:
        source (`str`): The file.
        reason (`str`): What is wrong.
        record (`str`, *optional*): Name of the record the problem is in.
        offset (`int`, *optional*): 1-based offset in the record's sequence.
        line (`int`, *optional*): 1-based line of the file.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        reason: str,
        record: str | None = None,
        offset: int | None = None,
        line: int | None = None,
    ):
        self.source = str(source)
        self.record = record
        self.offset = offset
        self.line = line
        where = []
        if record is not None:
            where.append(f"record {record!r}")
        if offset is not None:
            where.append(f"offset {offset}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(self.source, ", ".join(where) or "file", reason)


# ---- FASTA ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FastaRecord:
    """One FASTA record.

    Args:
        name (`str`): The first word of the header (Biopython's `id`).
        description (`str`): The whole header line after `>` (Biopython's `description`).
        sequence (`bytes`): Upper-case `ACGTN` bases.
        index (`int`): 0-based index of the record in its file.
        line (`int`): 1-based line of the header.
    """

    name: str
    description: str
    sequence: bytes
    index: int = 0
    line: int = 1

    def __len__(self) -> int:
        return len(self.sequence)


def _open_fasta(path: Path) -> IO[bytes]:
    """Open plain or gzip FASTA, detected by the magic bytes (not the file name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def _first_bad(seq: bytes, raw: bytes) -> tuple[int, str]:
    """Index of the first character outside ACGTN (in the folded `seq`) and why it is refused
    (naming the character as written in `raw`)."""
    for i, byte in enumerate(seq):
        if byte not in _ALLOWED:
            char = chr(raw[i])
            if byte in IUPAC_AMBIGUITY:  # only reached with iupac="error"
                return i, f"IUPAC ambiguity code {char!r} (pass iupac='n' to read it as N)"
            return i, f"character {char!r} is not one of A, C, G, T, N"
    return -1, ""  # pragma: no cover - only called once a bad character is known


def read_fasta(path: str | os.PathLike, iupac: IupacPolicy = "error") -> Iterator[FastaRecord]:
    """Stream the records of a FASTA file (plain or gzip, detected by its magic bytes).

    Records are yielded one at a time (a record's sequence is held whole; the file is not).
    Sequence lines may be wrapped at any width; blank lines and whitespace are skipped; lower
    case is folded to upper case, so the sequences equal Biopython's `str(record.seq).upper()`.

    Args:
        path (`str` or `os.PathLike`): The file.
        iupac (`str`, defaults to `"error"`): `"error"` refuses the IUPAC ambiguity codes
            (`R Y S W K M B D H V`); `"n"` reads them as `N`.

    Yields:
        `FastaRecord`: Name, description and upper-case `ACGTN` sequence of each record.

    Raises:
        `LeWMDataError`: for an empty file, text before the first header, a header without a
        name, a record without sequence, a character outside ACGTN (naming the record and its
        1-based offset) or a truncated or corrupt gzip file.
    """
    check_choice("iupac", iupac, IupacPolicy)
    path = Path(path)
    if not path.is_file():
        raise LeWMDataError(path, "no such file")
    table = _FOLD_TABLES[iupac]
    name: str | None = None
    description = ""
    header_line = 0
    chunks: list[bytes] = []
    length = 0
    index = 0
    lineno = 0

    def finish() -> FastaRecord:
        if length == 0:
            raise LeWMDataError(path, "record without sequence", record=name, line=header_line)
        return FastaRecord(name, description, b"".join(chunks), index, header_line)

    try:
        with _open_fasta(path) as handle:
            for raw in handle:
                lineno += 1
                if raw.startswith(b">"):
                    if name is not None:
                        yield finish()
                        index += 1
                    description = raw[1:].strip().decode("utf-8", errors="replace")
                    name = description.split(maxsplit=1)[0] if description else ""
                    if not name:
                        raise LeWMDataError(path, "header without a name", line=lineno)
                    header_line, chunks, length = lineno, [], 0
                    continue
                seq = raw.translate(table, _WHITESPACE)
                if not seq:
                    continue
                if name is None:
                    raise LeWMDataError(
                        path, "text before the first '>' header", offset=1, line=lineno
                    )
                if seq.translate(None, _ALLOWED):
                    i, reason = _first_bad(seq, raw.translate(None, _WHITESPACE))
                    raise LeWMDataError(
                        path, reason, record=name, offset=length + i + 1, line=lineno
                    )
                chunks.append(seq)
                length += len(seq)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise LeWMDataError(
            path,
            f"truncated or corrupt gzip file ({err})",
            record=name,
            offset=length + 1 if name is not None else None,
            line=lineno + 1,
        ) from err
    if name is None:
        raise LeWMDataError(path, "empty file: no FASTA record", offset=1, line=1)
    yield finish()


def write_fasta(
    path: str | os.PathLike,
    records: Sequence[tuple[str, str]],
    line_width: int = 60,
    compress: bool | None = None,
) -> Path:
    """Write records to a FASTA file atomically (a temporary file renamed into place).

    Args:
        path (`str` or `os.PathLike`): Destination.
        records (`Sequence[tuple[str, str]]`): `(header, sequence)` pairs; the header is written
            after `>` as given.
        line_width (`int`, defaults to 60): Bases per sequence line.
        compress (`bool`, *optional*): Gzip the file (with a zero timestamp, so equal content
            gives equal bytes). Defaults to whether `path` ends in `.gz`.

    Returns:
        `Path`: The file written.
    """
    if not isinstance(line_width, int) or line_width < 1:
        raise LeWMConfigError("line_width", line_width, "must be a positive integer")
    path = Path(path)
    compress = path.name.endswith(".gz") if compress is None else compress
    lines: list[str] = []
    for header, sequence in records:
        lines.append(f">{header}")
        lines.extend(sequence[i : i + line_width] for i in range(0, len(sequence), line_width))
    payload = ("\n".join(lines) + "\n").encode()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- tokens ---------------------------------------------------------------------------------
def encode_dna(sequence: bytes | str) -> np.ndarray:
    """Token ids of an upper-case `ACGTN` sequence (the ids of `build_dna_tokenizer`).

    Args:
        sequence (`bytes` or `str`): Bases.

    Returns:
        `np.ndarray`: `(len,)` uint8 ids.
    """
    raw = sequence.encode() if isinstance(sequence, str) else sequence
    ids = _ID_LUT[np.frombuffer(raw, dtype=np.uint8)]
    if ids.size and int(ids.max()) == 255:
        i = int(np.argmax(ids == 255))
        raise LeWMInputError("sequence", chr(raw[i]), f"offset {i + 1} is not one of A, C, G, T, N")
    return ids


def decode_dna(ids: Sequence[int] | np.ndarray) -> str:
    """The bases of token ids 0-4 (inverse of `encode_dna`)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= len(DNA_BASES)):
        raise LeWMInputError("ids", f"[{ids.min()}, {ids.max()}]", "bases are ids 0-4")
    return np.frombuffer(_ALLOWED, dtype=np.uint8)[ids].tobytes().decode()


def build_dna_tokenizer(model_max_length: int = 1_000_000) -> PreTrainedTokenizerFast:
    """A character-level `PreTrainedTokenizerFast` over `A C G T N` plus `<pad>` and `<end>`.

    Built offline from a `tokenizers` WordLevel model (no download). Lower case is folded to
    upper case and whitespace dropped; any other character becomes `N` (the FASTA reader is
    where bad characters are refused). Pass it to the Trainer as `processing_class` so that
    checkpoints carry it (`save_pretrained` / `AutoTokenizer.from_pretrained`).

    Args:
        model_max_length (`int`, defaults to 1000000): Longest sequence the tokenizer accepts.

    Returns:
        `transformers.PreTrainedTokenizerFast`: ids as in `DNA_VOCAB`.
    """
    backend = Tokenizer(models.WordLevel(dict(DNA_VOCAB), unk_token="N"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), "")]
        + [normalizers.Replace(base.lower(), base) for base in DNA_BASES]
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=DNA_PAD_TOKEN,
        additional_special_tokens=[DNA_END_TOKEN],
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=model_max_length,
    )


# ---- windows and regions --------------------------------------------------------------------
def split_region(length: int, holdout_fraction: float = 0.1) -> tuple[int, int, int]:
    """Split a record into a training region and a held-out region at its end.

    Args:
        length (`int`): Bases in the record.
        holdout_fraction (`float`, defaults to 0.1): Fraction held out (the last bases).

    Returns:
        `tuple[int, int, int]`: `(0, cut, length)`: training `[0, cut)`, validation
        `[cut, length)`, with `length - cut = ceil(length * holdout_fraction)`.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise LeWMConfigError("holdout_fraction", holdout_fraction, "must lie in (0, 1)")
    held = math.ceil(length * holdout_fraction - 1e-9)
    return 0, length - held, length


def window_starts(
    start: int, end: int, length: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
    """Start offsets of the windows of a region, `stride` apart, with a random start phase.

    Every window lies inside `[start, end)`. The phase is uniform in
    `[0, min(stride, end - start - length + 1))`, so a region that holds one window always
    gives at least one.

    Args:
        start (`int`): First base of the region.
        end (`int`): One past its last base.
        length (`int`): Window length.
        stride (`int`): Offset between consecutive windows.
        rng (`np.random.Generator`): Draws the phase.

    Returns:
        `np.ndarray`: int64 start offsets (empty if the region is shorter than a window).
    """
    if not isinstance(length, int) or length < 1:
        raise LeWMConfigError("window_length", length, "must be a positive integer")
    if not isinstance(stride, int) or stride < 1:
        raise LeWMConfigError("window_stride", stride, "must be a positive integer")
    span = end - start
    if span < length:
        return np.zeros(0, dtype=np.int64)
    phase = int(rng.integers(0, min(stride, span - length + 1)))
    return np.arange(start + phase, end - length + 1, stride, dtype=np.int64)


def extract_windows(ids: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Windows `(len(starts), length)` of a record's token ids (a copy in `ids`' dtype, read
    through a strided view: no `(len(starts), length)` index array is built)."""
    if len(starts) == 0:
        return np.zeros((0, length), dtype=ids.dtype)
    return np.lib.stride_tricks.sliding_window_view(ids, length)[starts]


@dataclass
class DNAWindows:
    """Windows of one split.

    Args:
        ids (`np.ndarray`): `(N, L)` uint8 token ids.
        record (`np.ndarray`): `(N,)` index of each window's record.
        start (`np.ndarray`): `(N,)` 0-based offset of each window in its record.
    """

    ids: np.ndarray
    record: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def split_windows(
    records: Sequence[FastaRecord],
    length: int,
    stride: int,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    max_n_fraction: float = 1.0,
    source: str = "records",
) -> dict[str, DNAWindows]:
    """Cut records into `train` and `validation` windows, split by region.

    Each record's last `holdout_fraction` (see `split_region`) is the validation region and the
    rest the training region; a window lies inside one region, so the splits share 0 bp. Each
    region's windows are `stride` apart from a random phase (see `window_starts`).

    Args:
        records (`Sequence[FastaRecord]`): The records (e.g. from `read_fasta`).
        length (`int`): Window length.
        stride (`int`): Offset between windows.
        holdout_fraction (`float`, defaults to 0.1): Validation fraction at each record's end.
        seed (`int`, defaults to 0): Seed of the start phases.
        max_n_fraction (`float`, defaults to 1.0): Windows with a larger fraction of N are
            dropped.
        source (`str`, defaults to `"records"`): Named in errors (e.g. the FASTA path).

    Returns:
        `dict[str, DNAWindows]`: `"train"` and `"validation"`.

    Raises:
        `LeWMDataError`: when the window is longer than every record, or a split gets no window.
    """
    if not records:
        raise LeWMDataError(source, "no records")
    longest = max(records, key=len)
    if length > len(longest):
        raise LeWMDataError(
            source,
            f"window_length={length} is longer than every record "
            f"(the longest has {len(longest)} bp)",
            record=longest.name,
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[np.ndarray, int, np.ndarray]]] = {"train": [], "validation": []}
    for r, record in enumerate(records):
        ids = encode_dna(record.sequence)
        _, cut, end = split_region(len(ids), holdout_fraction)
        for split, (lo, hi) in (("train", (0, cut)), ("validation", (cut, end))):
            starts = window_starts(lo, hi, length, stride, rng)
            windows = extract_windows(ids, starts, length)
            keep = (windows == N_ID).mean(axis=1) <= max_n_fraction  # (num_windows,)
            parts[split].append((windows[keep], r, starts[keep]))
    out = {}
    for split, chunks in parts.items():
        count = sum(len(s) for _, _, s in chunks)
        if count == 0:
            raise LeWMDataError(
                source,
                f"no {split} window of {length} bp (holdout_fraction={holdout_fraction}, "
                f"max_n_fraction={max_n_fraction}); use shorter windows",
                record=longest.name,
            )
        out[split] = DNAWindows(
            ids=np.concatenate([w for w, _, _ in chunks]).astype(np.uint8),
            record=np.concatenate([np.full(len(s), r, dtype=np.int64) for _, r, s in chunks]),
            start=np.concatenate([s for _, _, s in chunks]),
        )
    return out


# ---- genomes shipped by packages -----------------------------------------------------------
@dataclass(frozen=True)
class PackagedGenome:
    """A FASTA file shipped inside an installed Python package.

    Args:
        package (`str`): The package that ships it.
        path (`str`): Path inside the package.
        install (`str`): The requirement to install.
        description (`str`): What the file holds.
    """

    package: str
    path: str
    install: str
    description: str


PACKAGED_GENOMES: dict[str, PackagedGenome] = {
    # RefSeq sequence data (NCBI: no copyright restriction); pyrodigal itself is GPL-3.0-or-later.
    "c_diphtheriae_100kb": PackagedGenome(
        "pyrodigal",
        "tests/data/GCF_001457455.1_NCTC11397_genomic_100kb.fna.gz",
        "pyrodigal==3.7.1",
        "Corynebacterium diphtheriae NCTC11397 chromosome, first 100,000 bp (NZ_LN831026.1); "
        "1 record, gzip, 31.7 kB",
    ),
    "c_diphtheriae": PackagedGenome(
        "pyrodigal",
        "tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz",
        "pyrodigal==3.7.1",
        "Corynebacterium diphtheriae NCTC11397 complete chromosome (NZ_LN831026.1); "
        "1 record, 2,463,666 bp, gzip, 737 kB",
    ),
    "e_coli_contig": PackagedGenome(
        "pyrodigal",
        "tests/data/MIIJ01000039.fna.gz",
        "pyrodigal==3.7.1",
        "Escherichia coli contig MIIJ01000039; 1 record, 869,782 bp of which 432,770 are N, "
        "gzip, 139 kB",
    ),
}


def genome_packages() -> set[str]:
    """The only packages a recipe's `genome` may name: those of `PACKAGED_GENOMES` (locating a
    file in a package imports it, which runs its code)."""
    return {genome.package for genome in PACKAGED_GENOMES.values()}


def packaged_genome_path(name: str) -> Path:
    """Locate a genome FASTA shipped by an installed package (nothing is downloaded or copied).

    Args:
        name (`str`): A key of `PACKAGED_GENOMES` (e.g. `"c_diphtheriae_100kb"`), or
            `"package:path/inside/package"`.

    Returns:
        `Path`: The file, inside the installed package.

    Raises:
        `LeWMConfigError`: for an unknown name, or naming the package to install when it (or the
        file in it) is absent.
    """
    if name in PACKAGED_GENOMES:
        genome = PACKAGED_GENOMES[name]
    elif isinstance(name, str) and ":" in name:
        package, inner = name.split(":", 1)
        genome = PackagedGenome(package, inner, package, name)
    else:
        raise LeWMConfigError(
            "genome", name, f"must be one of {sorted(PACKAGED_GENOMES)} or 'package:path'"
        )
    # Locating a resource imports its package (and `find_spec` a dotted name's parents): a
    # recipe may name only the packages of this allow-list, never run an arbitrary module.
    allowed = genome_packages()
    if genome.package not in allowed:
        raise LeWMConfigError(
            "genome",
            name,
            f"package {genome.package!r} is not allowed: genomes come from {sorted(allowed)} "
            "(or give a FASTA file path instead)",
        )
    try:
        spec = importlib.util.find_spec(genome.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LeWMConfigError(
            "genome",
            name,
            f"is shipped by the package {genome.package!r}, which is not installed "
            f"(pip install {genome.install})",
        )
    resource = importlib.resources.files(genome.package).joinpath(genome.path)
    if not resource.is_file():
        raise LeWMConfigError(
            "genome",
            name,
            f"{genome.path} is not in the installed {genome.package!r} "
            f"(pip install {genome.install})",
        )
    path = Path(str(resource))
    if not path.is_file():  # a zipped install: not a plain file
        raise LeWMConfigError("genome", name, f"{genome.package!r} is not installed as plain files")
    return path


# ---- synthetic genome -----------------------------------------------------------------------
DEFAULT_MOTIFS: tuple[str, ...] = ("TATAAT", "TTGACA", "GAATTC", "AGGAGG", "CACGTG")


def synthetic_genome(
    num_records: int = 3,
    record_length: int = 20_000,
    seed: int = 0,
    motifs: Sequence[str] = DEFAULT_MOTIFS,
    motif_spacing: int = 200,
    repeat_length: int = 300,
    repeat_copies: int = 4,
    tandem_repeats: int = 4,
    n_run_length: int = 50,
) -> list[tuple[str, str]]:
    """A deterministic synthetic genome with planted motifs and repeats.

    Per record: a uniform i.i.d. background; a motif from `motifs` planted about every
    `motif_spacing` bases; `repeat_copies` copies of one `repeat_length`-base interspersed
    element (shared by all records, about 2% of its bases mutated per copy) written in lower
    case (soft-masked, as genome assemblies do); `tandem_repeats` tandem repeats (a 2-6 base
    unit repeated 5-15 times); and one run of `n_run_length` N (0 for none).

    Args:
        num_records (`int`, defaults to 3): Records.
        record_length (`int`, defaults to 20000): Bases per record.
        seed (`int`, defaults to 0): Seed; equal arguments give equal records.
        motifs (`Sequence[str]`, defaults to `DEFAULT_MOTIFS`): Motifs to plant.
        motif_spacing (`int`, defaults to 200): Mean bases between planted motifs.
        repeat_length (`int`, defaults to 300): Length of the interspersed element.
        repeat_copies (`int`, defaults to 4): Copies of it per record.
        tandem_repeats (`int`, defaults to 4): Tandem repeats per record.
        n_run_length (`int`, defaults to 50): Length of the N run per record.

    Returns:
        `list[tuple[str, str]]`: `(header, sequence)` pairs, headers `synthetic_<i> ...`.
    """
    for field, value in (("num_records", num_records), ("record_length", record_length)):
        if not is_int_in(value, 1):
            raise LeWMConfigError(field, value, "must be a positive integer")
    needed = repeat_copies * repeat_length + tandem_repeats * 90 + n_run_length + 100
    if record_length < needed:
        raise LeWMConfigError("record_length", record_length, f"must be at least {needed}")
    for motif in motifs:
        if not motif or set(motif) - set("ACGT"):
            raise LeWMConfigError("motifs", motif, "motifs are non-empty ACGT strings")
    rng = np.random.default_rng(seed)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    element = bases[rng.integers(0, 4, repeat_length)]
    records = []
    for r in range(num_records):
        seq = bases[rng.integers(0, 4, record_length)]
        lower = np.zeros(record_length, dtype=bool)
        # Motifs at roughly regular spacing with jitter.
        if motifs and motif_spacing > 0:
            for pos in range(motif_spacing // 2, record_length - 16, motif_spacing):
                motif = np.frombuffer(motifs[int(rng.integers(len(motifs)))].encode(), np.uint8)
                at = pos + int(rng.integers(-motif_spacing // 4, motif_spacing // 4 + 1))
                at = min(max(at, 0), record_length - len(motif))
                seq[at : at + len(motif)] = motif
        # Non-overlapping slots for the repeats and the N run.
        slots = rng.permutation(record_length // 400)[: repeat_copies + tandem_repeats + 1]
        for i, slot in enumerate(slots):
            at = int(slot) * 400
            if i < repeat_copies:
                copy = element.copy()
                mutate = rng.random(repeat_length) < 0.02
                copy[mutate] = bases[rng.integers(0, 4, int(mutate.sum()))]
                end = min(at + repeat_length, record_length)
                seq[at:end] = copy[: end - at]
                lower[at:end] = True
            elif i < repeat_copies + tandem_repeats:
                unit = bases[rng.integers(0, 4, int(rng.integers(2, 7)))]
                tandem = np.tile(unit, int(rng.integers(5, 16)))
                end = min(at + len(tandem), record_length)
                seq[at:end] = tandem[: end - at]
            elif n_run_length > 0:
                end = min(at + n_run_length, record_length)
                seq[at:end] = ord("N")
        text = seq.tobytes().decode()
        if lower.any():
            chars = np.frombuffer(text.encode(), np.uint8).copy()
            chars[lower] += 32  # to lower case
            text = chars.tobytes().decode()
        records.append((f"synthetic_{r} seed={seed} length={record_length}", text))
    return records


def synthetic_records(**kwargs) -> list[FastaRecord]:
    """`synthetic_genome(**kwargs)` as `FastaRecord`s (upper case), as `read_fasta` reads them."""
    return [
        FastaRecord(header.split()[0], header, text.upper().encode(), i, 1)
        for i, (header, text) in enumerate(synthetic_genome(**kwargs))
    ]


__all__ = [
    "DNA_BASES",
    "DNA_EDIT_ALPHABET",
    "DNA_END_ID",
    "DNA_END_TOKEN",
    "DNA_PAD_ID",
    "DNA_PAD_TOKEN",
    "DNA_VOCAB",
    "DNA_VOCAB_SIZE",
    "N_ID",
    "PACKAGED_GENOMES",
    "DNAWindows",
    "FastaRecord",
    "LeWMDataError",
    "PackagedGenome",
    "build_dna_tokenizer",
    "decode_dna",
    "encode_dna",
    "extract_windows",
    "packaged_genome_path",
    "read_fasta",
    "split_region",
    "split_windows",
    "synthetic_genome",
    "synthetic_records",
    "window_starts",
    "write_fasta",
]
