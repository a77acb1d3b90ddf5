"""StepBatches: the global batches of a step, split over ranks and micro-batches, resumable, built
a step ahead on request; packed rows by next fit (window 1) or first fit decreasing over windows
of the order."""

from __future__ import annotations

import json
from collections import Counter

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


@pytest.mark.parametrize("window", [1, 16])
def test_a_step_built_ahead_is_the_next_step_and_a_checkpoint_before_it_resumes_at_it(window):
    """The trainer builds step n + 1 while the device runs step n (``prefetch``); a checkpoint
    taken in between must hold the state before step n + 1, so the resumed run trains on it."""
    plain, ahead = packed_batches(window=window), packed_batches(window=window)
    expected = [plain.next_step() for _ in range(12)]
    got = []
    for step in range(12):
        before = json.loads(json.dumps(ahead.state_dict()))
        ahead.prefetch()
        ahead.prefetch()  # a second request builds nothing more
        assert ahead.state_dict() == before  # the state a checkpoint now saves
        if step == 5:  # resume from that checkpoint in a new source, as `wmtp run --resume` does
            resumed = packed_batches(window=window)
            resumed.load_state_dict(before)
            assert [resumed.next_step() for _ in range(12 - step)] == expected[step:]
        got.append(ahead.next_step())
    assert got == expected


def test_loading_a_state_drops_the_step_built_ahead():
    batches = packed_batches()
    start = batches.state_dict()
    first = batches.next_step()
    batches.prefetch()
    batches.load_state_dict(start)
    assert batches.next_step() == first


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
    for _ in range(1, 12):  # past the end of the first epoch
        batches._pack_window()
        rows = [*batches.ready, batches.open]
        assert all(sum(LENGTHS[row]) <= ROW for row in rows)
        # every example of the windows so far in exactly one row, none from further on (the
        # first epoch's last window is shorter: a window stops at the end of its epoch)
        taken = batches.epoch * len(LENGTHS) + batches.position
        assert sorted(x for row in rows for x in row) == sorted(stream(taken))


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


# --- the training path: a JSONL dataset through assembly.dataset and the pipeline's batch source


def write_dataset_dir(root, n_problems=40, *, difficulty=lambda p: p % 3):
    """``root/train.jsonl`` in the documented layout: per problem 3 correct and 1 incorrect
    solutions, each output unique (so a batch row names its line), of varied lengths."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in range(n_problems):
        for j in range(4):
            body = f"# solution {p}.{j}\n" + "x = 1\n" * int(rng.integers(1, 30))
            record = {"instruction": f"Solve problem {p}.", "input": "", "output": body}
            record |= {"problem_id": f"P{p}", "is_correct": j < 3}
            if difficulty(p) is not None:
                record["difficulty"] = difficulty(p)
            lines.append(json.dumps(record))
    (root / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    return [json.loads(line) for line in lines]


def built_source(tmp_path, sets, rank=0, world=1):
    """``TrainData`` and the baseline pipeline's batch source, as ``Trainer.build`` makes them
    (this rank of ``world``)."""
    from types import SimpleNamespace

    from tests.train.train_helpers import TINY
    from wmtp import assembly
    from wmtp.recipe import load_recipe

    data_table = f'data={{kind="jsonl", path="{tmp_path / "ds"}", max_length=400}}'
    recipe = load_recipe(TINY, [data_table, *sets]).recipe
    data = assembly.dataset(recipe, assembly.tokenizer(recipe), progress=False)
    trainer = SimpleNamespace(ctx=SimpleNamespace(rank=rank, world_size=world))
    return data, recipe.pipeline.load()(recipe).batch_source(trainer, data)


def documents(batch) -> list[tuple[str, bool]]:
    """(output, whole) of every example a batch holds, in order: its learned bytes decoded, and
    whether it runs from BOS to EOS with one prompt then one response."""
    out = []
    ids_BS, labels_BS = batch["input_ids"], batch["labels"]
    for b in range(ids_BS.shape[0]):
        if "document_ids" in batch:
            doc = batch["document_ids"][b]
            spans = [(doc == d).nonzero().flatten() for d in doc.unique()]
        else:
            spans = [batch["attention_mask"][b].nonzero().flatten()]
        for span in spans:
            ids, labels = ids_BS[b, span].tolist(), labels_BS[b, span].tolist()
            if all(y == -100 for y in labels):
                continue  # a packed row's padding
            n_prompt = next(i for i, y in enumerate(labels) if y != -100)
            whole = ids[0] == 256 and ids[-1] == 257 and labels[n_prompt:] == ids[n_prompt:]
            out.append((bytes(y for y in labels if 0 <= y < 256).decode(), whole))
    return out


def global_documents(sources, steps: int) -> list[tuple[str, bool]]:
    """Every rank's micro-batches of ``steps`` steps in the global batch's order."""
    out = []
    for _ in range(steps):
        per_rank = [s.next_step() for s in sources]
        for i in range(len(per_rank[0])):
            for rank_batches in per_rank:
                out += documents(rank_batches[i])
    return out


def correct_training_outputs(records, data) -> list[str]:
    """The reference: correct rows of the training problems that fit max_length (by the
    README: held out by problem, baseline trains correct solutions only)."""
    held = set(data.heldout_problems)
    return sorted(
        r["output"]
        for r in records
        if r["is_correct"] and r["problem_id"] not in held and byte_length(r) <= 400
    )


def byte_length(record) -> int:
    """BOS, the Alpaca prompt (no input) as the README spells it, the output, EOS."""
    prompt = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        f"completes the request.\n\n### Instruction:\n{record['instruction']}\n\n### Response:\n"
    )
    return 1 + len((prompt + record["output"]).encode()) + 1


@pytest.mark.parametrize("packing", [False, True])
def test_an_epoch_gives_every_training_row_to_exactly_one_rank(tmp_path, packing):
    records = write_dataset_dir(tmp_path / "ds")
    sets = ["training.micro_batch_size=3", "training.grad_accum_steps=2"]
    if packing:  # window 1: whole examples in the epoch's order
        sets += ["data.packing=true", "data.pack_window=1"]
    built = [built_source(tmp_path, sets, rank=r, world=2) for r in range(2)]
    data = built[0][0]
    expected = correct_training_outputs(records, data)
    assert len(data.heldout_problems) == 2 and len(expected) > 50  # 0.05 of 40 problems
    docs = global_documents([s for _, s in built], steps=len(expected) // 6 + 2)
    assert all(whole for _, whole in docs)  # no example split across rows or cut
    assert sorted(out for out, _ in docs[: len(expected)]) == expected
    if packing:  # micro_batch_size counts rows of max_length tokens
        batch = built[0][1].next_step()[0]
        assert batch["input_ids"].shape == (3, 400)
    else:  # ... else examples
        assert built[0][1].next_step()[0]["input_ids"].shape[0] == 3


def test_packing_windows_hand_out_each_row_once_per_epoch_whole(tmp_path):
    records = write_dataset_dir(tmp_path / "ds")
    sets = ["training.micro_batch_size=2", "data.packing=true", "data.pack_window=16"]
    built = [built_source(tmp_path, sets, rank=r, world=2) for r in range(2)]
    data, sources = built[0][0], [s for _, s in built]
    expected = correct_training_outputs(records, data)
    docs = []
    while sources[0].epoch == 0:
        docs += global_documents(sources, 1)
    assert all(whole for _, whole in docs)
    pending = [data.train.example(int(i)).output for row in sources[0].ready for i in row]
    pending += [data.train.example(int(i)).output for i in sources[0].open]
    # epoch 0 whole, plus the first `position` rows of epoch 1: none lost, none twice
    next_epoch = [data.train.example(int(i)).output for i in data.epoch_order(1)]
    handed = sorted(out for out, _ in docs) + pending
    assert sorted(handed) == sorted(expected + next_epoch[: sources[0].position])


def test_resuming_mid_epoch_repeats_the_batches(tmp_path):
    write_dataset_dir(tmp_path / "ds")
    sets = ["training.micro_batch_size=3", "training.grad_accum_steps=2"]
    _, first = built_source(tmp_path, sets)
    for _ in range(5):
        first.next_step()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 0 and state["position"] == 30  # mid-epoch
    expected = [documents(b) for _ in range(20) for b in first.next_step()]  # into epoch 1
    _, resumed = built_source(tmp_path, sets)
    resumed.load_state_dict(state)
    assert [documents(b) for _ in range(20) for b in resumed.next_step()] == expected


def test_difficulty_bins_give_the_weights_proportions_over_epochs(tmp_path):
    """``data.sampling = { kind = "difficulty", bins, weights }``: each draw's bin has its weight's
    share (3,600 draws: the binomial sd of a share is at most 0.0083, 0.04 is ~5 sd); rows of
    unknown difficulty are never drawn, and counted; only correct rows are drawn."""
    records = write_dataset_dir(tmp_path / "ds", difficulty=lambda p: None if p % 8 == 7 else p % 3)
    sampling = 'data.sampling={kind="difficulty", bins={a=[0,0], b=[1,1], c=[2,2]}, '
    sampling += "weights={a=6, b=3, c=1}}"
    sets = [sampling, "training.micro_batch_size=10", "data.split={heldout_fraction=0.0}"]
    sets.append("training.eval_every=0")  # nothing held out to evaluate
    data, source = built_source(tmp_path, sets)
    by_output = {r["output"]: r for r in records}
    drawn = [by_output[out] for out, _ in global_documents([source], 360)]
    assert all(r["is_correct"] for r in drawn) and all("difficulty" in r for r in drawn)
    shares = Counter(r["difficulty"] for r in drawn)
    for d, weight in enumerate((0.6, 0.3, 0.1)):
        assert abs(shares[d] / len(drawn) - weight) < 0.04, shares
    unknown = sum("difficulty" not in r and byte_length(r) <= 400 for r in records)
    assert unknown > 0
    assert f"data: left out {unknown} rows: difficulty unknown or in no bin (never drawn)" in (
        data.report()
    )
