"""TrainData: the split, the length rule and n_samples, counted; orders and batches per rank."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.data.data_rows import problem_rows, write_dataset
from wmtp.data.dataset import make_train_data
from wmtp.data.examples import IGNORE_INDEX, encode_example, format_prompt
from wmtp.data.jsonl import example_from_record
from wmtp.data.metadata import index_jsonl
from wmtp.data.samplers import DifficultySampler
from wmtp.data.tokenizers import ByteTokenizer
from wmtp.errors import DataError
from wmtp.recipe.specs.data import PairsSpec

TOK = ByteTokenizer()


@pytest.fixture
def train_path(tmp_path):
    rows = problem_rows(20, correct=3, incorrect=2, difficulty=lambda p: 1 + p % 3 * 8)
    return write_dataset(tmp_path / "train.jsonl", rows)


def test_split_by_problem_and_counts(train_path):
    data = make_train_data(train_path, TOK, seed=0, heldout_fraction=0.2)
    assert len(data.heldout_problems) == 4
    train_problems = {
        data.train.rows.problem_ids[c] for c in data.train.rows.problem_of_row[data.train_rows]
    }
    assert not train_problems & set(data.heldout_problems)
    assert len(data.train_rows) == 16 * 5 and len(data.heldout_rows) == 4 * 5
    assert "80 training rows (48 correct), 20 held-out rows of 4 problems" in data.report()[0]


def test_too_long_rows_are_skipped_and_counted_or_truncated(train_path):
    lengths = make_train_data(train_path, TOK, seed=0).train.rows.n_tokens
    limit = int(np.sort(lengths)[len(lengths) // 2])
    skipping = make_train_data(train_path, TOK, seed=0, max_length=limit)
    n_long = int((lengths > limit).sum())
    assert n_long > 0 and len(skipping.train_rows) == 100 - n_long
    assert any(
        f"left out {n_long} rows: longer than max_length={limit}" in line
        for line in skipping.report()
    )
    cutting = make_train_data(train_path, TOK, seed=0, max_length=limit, truncate=True)
    assert len(cutting.train_rows) == 100
    batch = next(cutting.batches(cutting.epoch_order(0), 100))
    assert batch["input_ids"].shape[1] == limit


def test_n_samples_counts_what_it_leaves_out(train_path):
    data = make_train_data(train_path, TOK, seed=0, n_samples=30)
    assert len(data.train_rows) == 30
    assert "data: left out 70 rows: beyond n_samples=30" in data.report()


def test_epoch_order_is_correct_only_rank_sliced_and_deterministic(train_path):
    data = make_train_data(train_path, TOK, seed=5)
    full = data.epoch_order(0)
    assert len(full) == 60 and data.train.rows.is_correct[full].all()
    assert len(data.epoch_order(0, correct_only=False)) == 100
    shards = [data.epoch_order(0, rank=r, world_size=2) for r in range(2)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(full.tolist())
    again = make_train_data(train_path, TOK, seed=5).epoch_order(0)
    assert np.array_equal(full, again)


def test_difficulty_sampling_draws_only_from_weighted_bins(train_path):
    sampler = DifficultySampler({"easy": (1, 8), "hard": (9, 30)}, {"easy": 0, "hard": 1})
    data = make_train_data(train_path, TOK, seed=0, sampler=sampler)
    order = data.epoch_order(0)
    assert (data.train.rows.difficulty[order] >= 9).all()


def test_batches_follow_the_contract_and_hold_the_rows(train_path):
    data = make_train_data(train_path, TOK, seed=0)
    order = data.epoch_order(0)[:4]
    batch = next(data.batches(order, 4))
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    for row, i in enumerate(order):
        example = data.train.example(int(i))
        assert batch["problem_id"][row] == example.problem_id
        learned = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert TOK.decode(learned) == example.output
    packed = make_train_data(train_path, TOK, seed=0, packing=True, max_length=256)
    batch = next(packed.batches(order, 4))
    assert {"cu_seqlens", "position_ids", "document_ids", "max_seqlen"} <= set(batch)
    assert batch["input_ids"].shape[1] == 256 and batch["problem_id"] == [
        data.train.example(int(i)).problem_id for i in order
    ]


def test_pair_batches(train_path):
    pairs_spec = PairsSpec(length_bins=[64, 128], max_pairs_per_problem=2, unique=True)
    data = make_train_data(train_path, TOK, seed=0, pairs=pairs_spec)
    pairs = data.epoch_pairs(0)
    assert len(pairs) > 0
    batch = next(data.pair_batches(pairs, 3))
    assert batch["chosen"]["is_correct"] == [True] * len(batch["chosen"]["problem_id"])
    assert batch["chosen"]["problem_id"] == batch["rejected"]["problem_id"]
    with pytest.raises(DataError, match=r"data\.pairs is not set"):
        make_train_data(train_path, TOK, seed=0).epoch_pairs(0)


def test_heldout_file_must_not_share_problems(train_path, tmp_path):
    held = write_dataset(tmp_path / "heldout.jsonl", problem_rows(21, 1, 0)[-1:])
    data = make_train_data(train_path, TOK, seed=0, heldout_path=held)
    assert data.heldout_problems == ["P20"] and len(data.train_rows) == 100
    assert len(next(data.heldout_batches(8))["problem_id"]) == 1
    clash = write_dataset(tmp_path / "clash.jsonl", problem_rows(2, 1, 0))
    with pytest.raises(DataError, match=r"clash\.jsonl:1: problem 'P0' is also in"):
        make_train_data(train_path, TOK, seed=0, heldout_path=clash)


def test_split_is_the_same_whatever_the_order_of_the_rows(train_path, tmp_path):
    """The held-out problems depend on the seed, not on where a problem's rows sit in the file:
    the file's lines shuffled give the same split, and no problem is on both sides."""
    lines = train_path.read_text().splitlines()
    shuffled = tmp_path / "shuffled" / "train.jsonl"
    shuffled.parent.mkdir()
    order = np.random.default_rng(1).permutation(len(lines))
    shuffled.write_text("".join(lines[i] + "\n" for i in order))
    splits = []
    for path in (train_path, shuffled):
        data = make_train_data(path, TOK, seed=3, heldout_fraction=0.2)
        rows = data.train.rows
        trained = {rows.problem_ids[c] for c in rows.problem_of_row[data.train_rows]}
        held = set(data.heldout_problems)
        assert not trained & held and len(trained | held) == 20 and len(held) == 4
        records = [json.loads(x) for x in path.read_text().splitlines()]  # the file itself
        outputs = {records[int(i)]["output"] for i in data.train_rows}
        assert outputs == {r["output"] for r in records if r["problem_id"] in trained}
        splits.append(held)
    assert splits[0] == splits[1]
    assert (
        set(make_train_data(train_path, TOK, seed=4, heldout_fraction=0.2).heldout_problems)
        != (splits[0])
    )


def test_heldout_rows_too_long_are_counted(train_path):
    lengths = make_train_data(train_path, TOK, seed=0).train.rows.n_tokens
    limit = int(np.sort(lengths)[len(lengths) // 2])
    data = make_train_data(train_path, TOK, seed=0, max_length=limit, heldout_fraction=0.2)
    whole = make_train_data(train_path, TOK, seed=0, heldout_fraction=0.2)
    dropped = int((lengths[whole.heldout_rows] > limit).sum())
    assert dropped > 0 and len(data.heldout_rows) == len(whole.heldout_rows) - dropped
    assert f"data: left out {dropped} rows: held-out, longer than max_length={limit}" in " ".join(
        data.report()
    )


def test_truncated_rows_are_reported_and_only_a_full_prompt_leaves_a_row_out(train_path):
    lengths = make_train_data(train_path, TOK, seed=0).train.rows.n_tokens
    n_prompt = 1 + len(format_prompt("Solve problem 0."))  # every prompt here is this long
    limit = n_prompt + 10  # rows with fewer than 10 output bytes keep them all
    cut = make_train_data(train_path, TOK, seed=0, max_length=limit, truncate=True)
    assert len(cut.train_rows) == 100
    n_cut = int((lengths > limit).sum())
    assert n_cut > 0 and f"data: {n_cut} training rows cut to max_length={limit}" in " ".join(
        cut.report()
    )
    none_left = make_train_data(train_path, TOK, seed=0, max_length=n_prompt, truncate=True)
    assert len(none_left.train_rows) == 0
    assert any(
        f"left out 100 rows: prompt fills max_length={n_prompt}" in line
        for line in none_left.report()
    )


def _edit_row_6(train_path) -> dict:
    """Row 6's output made long (same problem and label: the indices still agree)."""
    lines = train_path.read_text().splitlines()
    record = json.loads(lines[6])
    record["output"] = "y" * 400
    lines[6] = json.dumps(record)
    train_path.write_text("\n".join(lines) + "\n")
    return record


def test_metadata_of_an_edited_file_is_not_trusted_but_recomputed_and_said(train_path):
    """Metadata records the file's sha256: after an edit its lengths (which decide the rows
    that fit) are recomputed, with a note saying why and how to save them again."""
    index_jsonl(train_path, TOK, progress=False)
    _edit_row_6(train_path)
    data = make_train_data(train_path, TOK, seed=0, max_length=200)
    assert 6 not in data.train_rows  # its real length, not the metadata's, decided
    assert data.train.lengths_from is None
    (note,) = [n for n in data.train.notes if "another version" in n]
    assert "train_metadata.json was built from another version of train.jsonl" in note
    assert f"wmtp data index {train_path} --force" in note


def test_a_row_edited_after_metadata_without_a_hash_is_a_located_error(train_path):
    """Metadata from before files were hashed (or a file edited while a run reads it): the
    length a row encodes to is checked against the recorded one, and a row whose text changed
    stops with its line, never trains (or crashes) on the stale length."""
    meta_path = index_jsonl(train_path, TOK, progress=False)
    meta = json.loads(meta_path.read_text())
    del meta["source_sha256"]
    meta_path.write_text(json.dumps(meta))
    record = _edit_row_6(train_path)
    data = make_train_data(train_path, TOK, seed=0, max_length=200)
    assert 6 in data.train_rows  # the metadata's length fits
    edited = len(encode_example(example_from_record(record, "edited"), TOK))
    with pytest.raises(DataError) as err:
        list(data.batches(data.train_rows, 100))
    assert f"train.jsonl:7: {edited} tokens, but " in str(err.value)
    assert "train_metadata.json records" in str(err.value) and "--force" in str(err.value)


def test_difficulty_sampling_never_draws_unknown_or_unweighted_rows_and_counts_them(tmp_path):
    rows = problem_rows(12, 2, 0, difficulty=lambda p: [None, 1, 5, 9][p % 4])
    path = write_dataset(tmp_path / "train.jsonl", rows)
    sampler = DifficultySampler(
        {"low": (-10, 4), "mid": (5, 8), "high": (9, 9)}, {"low": 1, "mid": 1, "high": 0}
    )
    data = make_train_data(path, TOK, seed=0, sampler=sampler)
    drawn = {data.train.example(int(i)).difficulty for i in data.epoch_order(0)}
    assert drawn == {1, 5}  # never unknown (though -1 is in [-10, 4]), never the weight-0 bin
    report = " ".join(data.report())
    assert "left out 6 rows: difficulty unknown or in no bin (never drawn)" in report
    assert "left out 6 rows: in a difficulty bin of weight 0 (never drawn)" in report
