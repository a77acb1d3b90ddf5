"""StepBatches: the global batches of a step, split over ranks and micro-batches, resumable;
packed rows by next fit (window 1) or first fit decreasing over windows of the order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmtp.train.data_source import PackedRows, StepBatches

LENGTHS = np.random.default_rng(0).integers(3, 17, size=40)  # tokens of example i
ROW = 20


def order_of(epoch: int) -> np.ndarray:
    return np.random.default_rng(epoch).permutation(len(LENGTHS))


def packed_batches(rank=0, world=1, micro=2, accum=1, window=1) -> StepBatches:
    return StepBatches(
        order_of,
        lambda rows: rows,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        rank=rank,
        world_size=world,
        packed=PackedRows(
            ROW, lambda i: int(LENGTHS[i]), lambda rows: [r.tolist() for r in rows], window
        ),
    )


def test_packed_rows_are_filled_in_order_and_never_overflow():
    batches = packed_batches(micro=3)
    seen = []
    for _ in range(10):
        (rows,) = batches.next_step()
        assert len(rows) == 3
        for i, row in enumerate(rows):
            assert sum(LENGTHS[row]) <= ROW
            if i + 1 < len(rows):  # next fit: the next row's first example did not fit here
                assert sum(LENGTHS[row]) + LENGTHS[rows[i + 1][0]] > ROW
        seen += [x for row in rows for x in row]
    order = np.concatenate([order_of(e) for e in (0, 1)])
    assert seen == order[: len(seen)].tolist()  # whole examples, in order, none skipped
    assert len(seen) > len(LENGTHS)  # and on into the next epoch


@pytest.mark.parametrize("window", [1, 16])
def test_any_world_size_sees_the_same_global_rows(window):
    one = packed_batches(micro=4, accum=2, window=window)
    ranks = [packed_batches(rank=r, world=2, micro=2, accum=2, window=window) for r in range(2)]
    for _ in range(6):
        whole = [row for micro in one.next_step() for row in micro]
        parts = [b.next_step() for b in ranks]
        split = [row for i in range(2) for r in range(2) for row in parts[r][i]]
        assert sorted(map(tuple, split)) == sorted(map(tuple, whole))


@pytest.mark.parametrize("window", [1, 16])
def test_resuming_from_the_state_repeats_the_rows(window):
    batches = packed_batches(window=window)
    batches.next_step()
    state = json.loads(json.dumps(batches.state_dict()))  # as trainer.json keeps it
    if window > 1:  # mid-window: rows of the window are still to be handed out
        assert state["ready"] and state["position"] == window
    expected = [batches.next_step() for _ in range(8)]  # on through later windows and epochs
    resumed = packed_batches(window=window)
    resumed.load_state_dict(state)
    assert [resumed.next_step() for _ in range(8)] == expected
    assert 0 < packed_batches(window=window).steps_per_epoch() < len(LENGTHS) / 2


def test_a_state_without_rows_starts_packing_at_its_position():
    """Checkpoints written before windows hold only (epoch, position): next fit left no row open."""
    batches = packed_batches()
    batches.load_state_dict({"epoch": 0, "position": 0})
    assert batches.next_step() == packed_batches().next_step()


def stream(n: int) -> list[int]:
    """The first ``n`` examples of the order, on through the epochs."""
    return np.concatenate([order_of(e) for e in range(n // len(LENGTHS) + 1)])[:n].tolist()


@pytest.mark.parametrize("window", [1, 7, 16])
def test_each_window_is_packed_whole_into_rows_that_never_overflow(window):
    batches = packed_batches(window=window)
    for k in range(1, 12):  # past the end of the first epoch
        batches._pack_window()
        rows = [*batches.ready, batches.open]
        assert all(sum(LENGTHS[row]) <= ROW for row in rows)
        # every example of the windows so far in exactly one row, none from further on
        assert sorted(x for row in rows for x in row) == sorted(stream(k * window))


@pytest.mark.parametrize("window", [1, 16])
def test_steps_hand_out_every_example_once_and_repeat_run_to_run(window):
    batches = packed_batches(micro=3, window=window)
    seen = [x for _ in range(20) for row in batches.next_step()[0] for x in row]
    kept = [x for row in [*batches.ready, batches.open] for x in row]
    assert sorted(seen + kept) == sorted(stream(batches.position + batches.epoch * len(LENGTHS)))
    again = packed_batches(micro=3, window=window)
    assert [x for _ in range(20) for row in again.next_step()[0] for x in row] == seen


def fill(batches: StepBatches, steps: int) -> float:
    rows = [row for _ in range(steps) for row in batches.next_step()[0]]
    return sum(int(LENGTHS[row].sum()) for row in rows) / (len(rows) * ROW)


def test_first_fit_decreasing_fills_rows_at_least_as_well_as_next_fit():
    next_fit = fill(packed_batches(), 30)
    windowed = {w: fill(packed_batches(window=w), 30) for w in (4, 16, 64)}
    assert all(f >= next_fit for f in windowed.values()), (next_fit, windowed)
    assert windowed[16] > next_fit + 0.1, (next_fit, windowed)


def test_input_tokens_leave_padding_out():
    from wmtp.data.collate import pack_batch, pack_rows, pad_batch
    from wmtp.data.examples import Encoded
    from wmtp.train.loop import input_tokens

    examples = [
        Encoded(list(range(1, n + 1)), [-100, *range(2, n + 1)], "p", True) for n in (5, 7, 3, 6)
    ]
    assert input_tokens(pad_batch(examples, pad_id=0)) == 21
    packed = pack_batch(pack_rows(examples, 12), pad_id=0, row_length=12)
    assert packed["input_ids"].numel() > 21 and input_tokens(packed) == 21
    pairs = {"chosen": pad_batch(examples[:2], 0), "rejected": pad_batch(examples[2:], 0)}
    assert input_tokens(pairs) == 21


def test_the_trainer_packs_fuller_rows_with_a_window(tmp_path):
    """Through the pipeline's batch source on the tiny recipe: a window of 64 fills more of the
    rows with real tokens than next fit (window 1)."""
    from tests.train.train_helpers import TINY
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer, input_tokens

    def fill_of(window: int) -> float:
        sets = ["data.packing=true", f"data.pack_window={window}", "training.micro_batch_size=4"]
        recipe = load_recipe(TINY, sets).recipe
        trainer = Trainer(
            recipe, "", tmp_path / str(window), init_distributed("cpu"), console=False
        )
        batches = trainer.build().batches
        assert batches.packed.window == window
        steps = [batch for _ in range(10) for batch in batches.next_step()]
        return sum(input_tokens(b) for b in steps) / sum(b["input_ids"].numel() for b in steps)

    next_fit, windowed = fill_of(1), fill_of(64)
    assert windowed > next_fit + 0.05, (next_fit, windowed)
