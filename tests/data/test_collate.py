"""Padded, packed and pair batches: the batch contract, checked against the model's own layout
code and against running each example alone through a tiny model."""

from __future__ import annotations

import pytest
import torch

from wmtp.data.collate import pack_batch, pack_rows, pad_batch, pair_batch
from wmtp.data.examples import IGNORE_INDEX, Encoded, Example, encode_example
from wmtp.data.tokenizers import ByteTokenizer
from wmtp.models.attention import SeqInfo

TOK = ByteTokenizer()


def encoded(output: str, pid: str = "p", correct: bool = True) -> Encoded:
    return encode_example(Example("Solve.", output, pid, correct), TOK, template="plain")


EXAMPLES = [encoded("x = 1\n"), encoded("def f():\n    pass\n", "q", False), encoded("y\n")]


def test_pad_batch_right_pads_and_masks():
    batch = pad_batch(EXAMPLES, TOK.pad_id, multiple_of=8)
    B, S = batch["input_ids"].shape
    assert (B, S % 8) == (3, 0) and max(map(len, EXAMPLES)) <= S
    for row, e in enumerate(EXAMPLES):
        n = len(e)
        assert batch["input_ids"][row, :n].tolist() == e.input_ids
        assert batch["labels"][row, :n].tolist() == e.labels
        assert (batch["input_ids"][row, n:] == TOK.pad_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [True] * n + [False] * (S - n)
    assert batch["problem_id"] == ["p", "q", "p"] and batch["is_correct"] == [True, False, True]
    assert SeqInfo.from_batch(batch) is None  # right padding: the model accepts it as is


def test_pack_rows_is_next_fit_in_order():
    lengths = [len(e) for e in EXAMPLES]
    rows = pack_rows(EXAMPLES, lengths[0] + lengths[1])
    assert rows == [EXAMPLES[:2], EXAMPLES[2:]]
    assert pack_rows(EXAMPLES, sum(lengths)) == [EXAMPLES]


def test_pack_batch_layout_matches_the_models_reference():
    row_length = len(EXAMPLES[0]) + len(EXAMPLES[1]) + 4
    rows = pack_rows(EXAMPLES, row_length)
    batch = pack_batch(rows, TOK.pad_id, row_length)
    # Reference: the model's own constructor of packed layouts, from document lengths per row.
    per_row = [[len(e) for e in row] for row in rows]
    per_row = [[*r, row_length - sum(r)] if sum(r) < row_length else r for r in per_row]
    ref = SeqInfo.packed(per_row)
    assert torch.equal(batch["position_ids"], ref.position_ids)
    assert torch.equal(batch["document_ids"], ref.document_ids)
    assert torch.equal(batch["cu_seqlens"], ref.cu_seqlens)
    assert batch["max_seqlen"] == ref.max_seqlen
    SeqInfo.from_batch(batch)  # validates against the batch shape
    flat_ids, flat_labels = batch["input_ids"].flatten(), batch["labels"].flatten()
    starts = batch["cu_seqlens"].tolist()
    for e, start in zip(EXAMPLES[:2], starts, strict=False):
        assert flat_ids[start : start + len(e)].tolist() == e.input_ids
        assert flat_labels[start : start + len(e)].tolist() == e.labels
    assert batch["problem_id"] == ["p", "q", "p"]


def test_no_target_crosses_a_document_in_a_packed_batch():
    # Each document starts with masked BOS + prompt, so head k (k <= n_prompt) at the end of one
    # document never scores a token of the next.
    rows = pack_rows(EXAMPLES, 64)
    batch = pack_batch(rows, TOK.pad_id, 64)
    docs, labels = batch["document_ids"][0], batch["labels"][0]
    min_prompt = min(e.n_prompt for e in EXAMPLES)
    for k in range(1, min_prompt + 1):
        crossing = docs[k:] != docs[:-k]  # target t+k lies in another document than t
        assert (labels[k:][crossing] == IGNORE_INDEX).all(), k


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_packed_forward_equals_each_document_alone(backend):
    from wmtp.models.args import flavour
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    args = flavour("tiny").with_vocab(TOK.vocab_size)
    model = LlamaMTP(args, attention=backend).eval()
    row_length = sum(len(e) for e in EXAMPLES) + 3
    batch = pack_batch(pack_rows(EXAMPLES, row_length), TOK.pad_id, row_length)
    with torch.no_grad():
        packed = model(batch["input_ids"], seq=SeqInfo.from_batch(batch))  # [1, S, n, V]
        start = 0
        for e in EXAMPLES:
            alone = model(torch.tensor([e.input_ids]))
            got = packed[0, start : start + len(e)]
            torch.testing.assert_close(got, alone[0], rtol=1e-4, atol=1e-4)
            start += len(e)


def test_pair_batch_pads_both_sides_to_one_length():
    good, bad = encoded("return 1\n", "p"), encoded("return 22222\n", "p", correct=False)
    batch = pair_batch([(good, bad)], TOK.pad_id)
    assert batch["chosen"]["input_ids"].shape == batch["rejected"]["input_ids"].shape
    assert batch["chosen"]["is_correct"] == [True] and batch["rejected"]["is_correct"] == [False]
    assert batch["rejected"]["input_ids"][0].tolist() == bad.input_ids
