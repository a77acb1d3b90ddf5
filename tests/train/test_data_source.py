"""StepBatches: the global batches of a step, split over ranks and micro-batches, resumable."""

from __future__ import annotations

import numpy as np

from wmtp.train.data_source import PackedRows, StepBatches

LENGTHS = np.random.default_rng(0).integers(3, 17, size=40)  # tokens of example i
ROW = 20


def packed_batches(rank=0, world=1, micro=2, accum=1) -> StepBatches:
    return StepBatches(
        lambda epoch: np.random.default_rng(epoch).permutation(len(LENGTHS)),
        lambda rows: rows,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        rank=rank,
        world_size=world,
        packed=PackedRows(ROW, lambda i: int(LENGTHS[i]), lambda rows: [r.tolist() for r in rows]),
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
    order = np.concatenate([np.random.default_rng(e).permutation(len(LENGTHS)) for e in (0, 1)])
    assert seen == order[: len(seen)].tolist()  # whole examples, in order, none skipped
    assert len(seen) > len(LENGTHS)  # and on into the next epoch


def test_any_world_size_sees_the_same_global_rows():
    one = packed_batches(micro=4, accum=2)
    ranks = [packed_batches(rank=r, world=2, micro=2, accum=2) for r in range(2)]
    for _ in range(3):
        whole = [row for micro in one.next_step() for row in micro]
        parts = [b.next_step() for b in ranks]
        split = [row for i in range(2) for r in range(2) for row in parts[r][i]]
        assert sorted(map(tuple, split)) == sorted(map(tuple, whole))


def test_resuming_from_the_state_repeats_the_rows():
    batches = packed_batches()
    batches.next_step()
    state = batches.state_dict()
    expected = [batches.next_step() for _ in range(3)]
    resumed = packed_batches()
    resumed.load_state_dict(state)
    assert [resumed.next_step() for _ in range(3)] == expected
    assert 0 < packed_batches().steps_per_epoch() < len(LENGTHS) / 2


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
