"""TrainData: the split, the length rule and n_samples, counted; orders and batches per rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.data_rows import problem_rows, write_dataset
from wmtp.data.dataset import make_train_data
from wmtp.data.examples import IGNORE_INDEX
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
