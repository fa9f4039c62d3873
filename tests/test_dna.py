"""DNA input: FASTA reading, bad input, windows split by region, tokenizer, packaged genomes."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
from scipy import stats

from lewm_hf import LeWMConfigError
from lewm_hf.data import dna
from lewm_hf.data.dna import (
    DNA_END_ID,
    DNA_PAD_ID,
    N_ID,
    FastaRecord,
    LeWMDataError,
    build_dna_tokenizer,
    decode_dna,
    encode_dna,
    packaged_genome_path,
    read_fasta,
    split_region,
    split_windows,
    synthetic_genome,
    window_starts,
    write_fasta,
)

RECORDS = [
    ("chr1 first chromosome", "ACGTacgtNNACGTTTGA" * 7),
    ("chr2", "GATTACA"),
    ("plasmid x=1", "cccgggAAATTTnnn" * 11),
]


def _biopython_records(path):
    bio = pytest.importorskip("Bio.SeqIO")
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    with opener(path, "rt") as handle:
        return [
            (r.id, r.description, str(r.seq).upper().encode()) for r in bio.parse(handle, "fasta")
        ]


def _ours(path, **kwargs):
    return [(r.name, r.description, r.sequence) for r in read_fasta(path, **kwargs)]


@pytest.mark.parametrize("name", ["c_diphtheriae_100kb", "c_diphtheriae", "e_coli_contig"])
def test_fasta_reader_is_byte_identical_to_biopython_on_real_genomes(name):
    pytest.importorskip("pyrodigal")
    path = packaged_genome_path(name)
    ours = _ours(path)
    assert ours == _biopython_records(path)
    lengths = {"c_diphtheriae_100kb": 100_000, "c_diphtheriae": 2_463_666, "e_coli_contig": 869_782}
    assert [len(seq) for _, _, seq in ours] == [lengths[name]]
    if name == "e_coli_contig":  # half of this contig is N
        assert ours[0][2].count(b"N") == 432_770


@pytest.mark.parametrize("width", [1, 7, 60, 10_000])
@pytest.mark.parametrize("compress", [False, True])
def test_fasta_wrapped_multi_record_plain_and_gzip(tmp_path, width, compress):
    path = write_fasta(tmp_path / "multi.fa", RECORDS, line_width=width, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is compress  # gzip by magic, not by name
    records = list(read_fasta(path))
    assert [r.description for r in records] == [h for h, _ in RECORDS]
    assert [r.name for r in records] == ["chr1", "chr2", "plasmid"]
    assert [r.sequence for r in records] == [s.upper().encode() for _, s in RECORDS]
    assert [r.index for r in records] == [0, 1, 2]
    assert _ours(path) == _biopython_records(path)


def test_fasta_reader_skips_blank_lines_and_whitespace(tmp_path):
    path = tmp_path / "messy.fasta"
    path.write_bytes(b"\n>r1 desc\r\nac gt\r\n\n  NNa\t\n>r2\nT\n")
    records = list(read_fasta(path))
    assert [(r.name, r.sequence, r.line) for r in records] == [
        ("r1", b"ACGTNNA", 2),
        ("r2", b"T", 6),
    ]


def test_fasta_reader_streams_records(tmp_path):
    path = write_fasta(tmp_path / "s.fa", [("a", "ACGT"), ("b", "AC?")])
    stream = read_fasta(path)
    assert next(stream).name == "a"  # the first record comes before the bad second one is read
    with pytest.raises(LeWMDataError):
        next(stream)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_fasta_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.fa"
    path.write_bytes(content)
    with pytest.raises(LeWMDataError, match="empty file") as info:
        list(read_fasta(path))
    assert info.value.source == str(path)
    gz = tmp_path / "empty.fa.gz"
    gz.write_bytes(gzip.compress(content))
    with pytest.raises(LeWMDataError, match="empty file"):
        list(read_fasta(gz))


def test_fasta_record_without_sequence_is_an_error(tmp_path):
    path = tmp_path / "r.fa"
    path.write_text(">ok\nACGT\n>hollow second\n\n>next\nAC\n")
    with pytest.raises(LeWMDataError, match="record without sequence") as info:
        list(read_fasta(path))
    assert (info.value.record, info.value.line) == ("hollow", 3)
    path.write_text(">ok\nACGT\n>last\n")
    with pytest.raises(LeWMDataError, match="record 'last'"):
        list(read_fasta(path))


def test_fasta_bad_characters_name_record_and_offset(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text(">first\nACGT\n>second\nACGTAC\nGGxA\n")
    with pytest.raises(LeWMDataError, match="'x' is not one of") as info:
        list(read_fasta(path))
    # 1-based offset 9 of record "second" (6 bases on its first line), on line 5 of the file.
    assert (info.value.record, info.value.offset, info.value.line) == ("second", 9, 5)
    assert "record 'second', offset 9" in str(info.value)


def test_fasta_iupac_policy(tmp_path):
    path = tmp_path / "iupac.fa"
    path.write_text(">r\nACRYswkmBDHVN\n")
    with pytest.raises(LeWMDataError, match="IUPAC ambiguity code 'R'") as info:
        list(read_fasta(path))
    assert info.value.offset == 3
    (record,) = read_fasta(path, iupac="n")
    assert record.sequence == b"ACNNNNNNNNNNN"
    path.write_text(">r\nACGU-\n")  # not IUPAC ambiguity codes: an error whatever the policy
    with pytest.raises(LeWMDataError, match="'U'"):
        list(read_fasta(path, iupac="n"))
    with pytest.raises(LeWMConfigError, match="iupac"):
        list(read_fasta(path, iupac="skip"))


def test_fasta_truncated_gzip_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    bases = "".join(rng.choice(list("ACGT"), size=20_000))
    path = write_fasta(tmp_path / "cut.fa.gz", [("r1", bases), ("r2", "AC")])
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(LeWMDataError, match="truncated or corrupt gzip") as info:
        list(read_fasta(path))
    # Cut half-way through r1: the error names it and how far it got.
    assert info.value.record == "r1" and 5_000 < info.value.offset < 15_000
    path.write_bytes(full[:1] + b"\x8b" + b"\x00" * 40)  # gzip magic, then garbage
    with pytest.raises(LeWMDataError, match="gzip"):
        list(read_fasta(path))


def test_fasta_text_before_first_header_is_an_error(tmp_path):
    path = tmp_path / "pre.fa"
    path.write_text("ACGT\n>r\nAC\n")
    with pytest.raises(LeWMDataError, match="before the first '>'") as info:
        list(read_fasta(path))
    assert info.value.line == 1
    with pytest.raises(LeWMDataError, match="no such file"):
        list(read_fasta(tmp_path / "absent.fa"))


def test_dna_window_longer_than_every_record_is_an_error():
    records = [FastaRecord("a", "a", b"ACGT" * 10), FastaRecord("b", "b", b"ACGT" * 20)]
    with pytest.raises(LeWMDataError, match="longer than every record") as info:
        split_windows(records, 81, 10, source="g.fa")
    assert (info.value.record, info.value.source) == ("b", "g.fa")
    # Long enough for a record, but its held-out 10% (8 bp) holds no window of 20.
    with pytest.raises(LeWMDataError, match="no validation window"):
        split_windows(records, 20, 10)


def test_dna_windows_split_by_region_with_zero_overlap():
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in (1000, 2345)]
    records = [FastaRecord(f"r{i}", f"r{i}", s.encode(), i) for i, s in enumerate(seqs)]
    out = split_windows(records, 50, 20, holdout_fraction=0.1, seed=3)
    assert split_region(1000) == (0, 900, 1000) and split_region(2345) == (0, 2110, 2345)
    cuts = [900, 2110]
    for split in ("train", "validation"):
        win = out[split]
        for ids, r, start in zip(win.ids, win.record, win.start):
            assert decode_dna(ids) == seqs[r][start : start + 50]
            if split == "train":
                assert start + 50 <= cuts[r]
            else:
                assert start >= cuts[r] and start + 50 <= len(seqs[r])
        for r in (0, 1):
            starts = win.start[win.record == r]
            assert np.all(np.diff(starts) == 20)
    # Every base sits in at most one split.
    train_bases = {
        (r, s + j) for r, s in zip(out["train"].record, out["train"].start) for j in range(50)
    }
    val_bases = {
        (r, s + j)
        for r, s in zip(out["validation"].record, out["validation"].start)
        for j in range(50)
    }
    assert not train_bases & val_bases


def test_dna_windows_drop_n_rich_windows():
    seq = b"ACGT" * 50 + b"N" * 100 + b"ACGT" * 50
    out = split_windows([FastaRecord("r", "r", seq)], 20, 20, seed=0, max_n_fraction=0.1)
    for ids in np.concatenate([out["train"].ids, out["validation"].ids]):
        assert (ids == N_ID).mean() <= 0.1
    kept = split_windows([FastaRecord("r", "r", seq)], 20, 20, seed=0)
    assert len(kept["train"]) > len(out["train"])


def test_dna_window_start_phase_is_uniform():
    phases = [
        int(window_starts(0, 1000, 30, 8, np.random.default_rng(seed))[0]) for seed in range(4000)
    ]
    counts = np.bincount(phases)
    assert len(counts) == 8
    assert stats.chisquare(counts).pvalue > 1e-3
    # A region that holds exactly one window always yields it.
    assert window_starts(5, 35, 30, 8, np.random.default_rng(1)).tolist() == [5]
    assert window_starts(5, 34, 30, 8, np.random.default_rng(1)).tolist() == []


def test_dna_tokenizer_save_and_load_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_dna_tokenizer()
    text = "ACGTNacgtn"
    ids = tokenizer(text)["input_ids"]
    assert ids == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert ids == encode_dna(text.upper()).tolist()
    assert tokenizer.pad_token_id == DNA_PAD_ID and len(tokenizer) == 7
    assert tokenizer.convert_tokens_to_ids("<end>") == DNA_END_ID
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    padded = loaded(["ACGT", "AC"], padding=True)
    assert padded["input_ids"] == [[0, 1, 2, 3], [0, 1, DNA_PAD_ID, DNA_PAD_ID]]
    assert padded["attention_mask"] == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert loaded.decode(loaded("GATTACA")["input_ids"]) == "GATTACA"
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_dna_tokenizer_travels_with_trainer_checkpoints(tmp_path):
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    model = torch.nn.Linear(2, 2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, processing_class=build_dna_tokenizer())
    trainer.save_model(str(tmp_path / "ckpt"))
    loaded = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert loaded("GGC")["input_ids"] == [2, 2, 1]


def test_encode_dna_rejects_non_bases():
    assert encode_dna(b"ACGTN").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(dna.LeWMInputError, match="offset 3"):
        encode_dna("ACx")


def test_packaged_dna_genome_path_found_or_names_the_package(monkeypatch):
    pytest.importorskip("pyrodigal")
    path = packaged_genome_path("c_diphtheriae_100kb")
    assert path.name == "GCF_001457455.1_NCTC11397_genomic_100kb.fna.gz"
    assert path.stat().st_size == 31_661
    same = packaged_genome_path(
        "pyrodigal:tests/data/GCF_001457455.1_NCTC11397_genomic_100kb.fna.gz"
    )
    assert same == path
    fake = dna.PackagedGenome("no_such_genome_pkg", "data/x.fa", "no-such-genome-pkg==1.0", "none")
    monkeypatch.setitem(dna.PACKAGED_GENOMES, "fake", fake)
    with pytest.raises(LeWMConfigError, match=re.escape("pip install no-such-genome-pkg==1.0")):
        packaged_genome_path("fake")
    with pytest.raises(LeWMConfigError, match="is not in the installed 'pyrodigal'"):
        packaged_genome_path("pyrodigal:tests/data/absent.fna.gz")
    with pytest.raises(LeWMConfigError, match="must be one of"):
        packaged_genome_path("human")


def test_synthetic_dna_genome_is_deterministic_with_motifs_and_repeats(tmp_path):
    a = synthetic_genome(num_records=2, record_length=20_000, seed=5)
    assert a == synthetic_genome(num_records=2, record_length=20_000, seed=5)
    assert a != synthetic_genome(num_records=2, record_length=20_000, seed=6)
    # Written files are byte-identical too (gzip without a timestamp).
    p1 = write_fasta(tmp_path / "a.fa.gz", a)
    p2 = write_fasta(
        tmp_path / "b.fa.gz", synthetic_genome(num_records=2, record_length=20_000, seed=5)
    )
    assert p1.read_bytes() == p2.read_bytes()
    for _, text in a:
        upper = text.upper()
        # ~100 planted motifs of 5 kinds against 20000 / 4^6 ~ 5 chance hits of each 6-mer.
        assert upper.count("TATAAT") >= 12
        assert upper.count("N" * 50) == 1
        # Four soft-masked copies of the 300-bp interspersed element.
        masked = re.findall("[acgt]{250,}", text)
        assert len(masked) == 4
        assert sum(x == y for x, y in zip(masked[0][:250], masked[1][:250])) > 225
        assert re.search(r"([ACGT]{2,6})\1{4,}", upper)  # a tandem repeat
    records = list(read_fasta(p1))
    assert [r.sequence for r in records] == [t.upper().encode() for _, t in a]
