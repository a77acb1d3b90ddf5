"""Batches from encoded examples: right-padded, padding-free packed, and critic pairs.

The batch contract (../shared/DESIGN.md): ``input_ids`` and ``labels`` LongTensor ``[B, S]`` with
labels *unshifted* and -100 on prompt and padding; padded batches add ``attention_mask`` (bool,
True on real tokens); packed batches add ``position_ids`` (restarting at 0 per document),
``document_ids`` ``[B, S]``, ``cu_seqlens`` (int32 ``[D+1]`` over the flattened ``B*S`` tokens,
every row start a boundary, a row's tail padding a document of its own) and ``max_seqlen``. Both
carry ``problem_id`` and ``is_correct`` lists, one entry per real example, in order.

In a packed row, head k at the last tokens of a document would target the first tokens of the next
one, which are response tokens when that document's BOS and prompt are shorter than k. The MTP loss
ignores every target in another document than its position (``wmtp.losses.mtp.head_targets`` with
the batch's ``document_ids``), whatever the prompts' lengths; code that counts head k's targets
itself must count them so too (``wmtp.losses.mtp.weight_sums``).
"""

from __future__ import annotations

import torch

from wmtp.data.examples import IGNORE_INDEX, Encoded, padded_length


def _meta(examples: list[Encoded]) -> dict:
    return {
        "problem_id": [e.problem_id for e in examples],
        "is_correct": [e.is_correct for e in examples],
    }


def pad_batch(
    examples: list[Encoded],
    pad_id: int,
    *,
    length: int | None = None,
    multiple_of: int = 1,
    max_length: int | None = None,
) -> dict:
    """Right-pad ``examples`` to ``length`` (default: the longest, rounded up to ``multiple_of``
    and capped at ``max_length``: :func:`padded_length`)."""
    assert examples, "an empty batch"
    longest = max(len(e) for e in examples)
    S = length if length is not None else padded_length(longest, multiple_of, max_length)
    assert longest <= S, f"length {S} is shorter than the longest example ({longest})"
    input_ids_BS = torch.full((len(examples), S), pad_id, dtype=torch.long)
    labels_BS = torch.full((len(examples), S), IGNORE_INDEX, dtype=torch.long)
    mask_BS = torch.zeros((len(examples), S), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e)
        input_ids_BS[row, :n] = torch.tensor(e.input_ids)
        labels_BS[row, :n] = torch.tensor(e.labels)
        mask_BS[row, :n] = True
    return {
        "input_ids": input_ids_BS,
        "labels": labels_BS,
        "attention_mask": mask_BS,
        **_meta(examples),
    }


def pack_rows(examples: list[Encoded], row_length: int) -> list[list[Encoded]]:
    """Group ``examples`` in order into rows of at most ``row_length`` tokens (next fit)."""
    rows: list[list[Encoded]] = []
    used = row_length  # forces a new row for the first example
    for e in examples:
        assert len(e) <= row_length, f"an example of {len(e)} tokens exceeds row {row_length}"
        if used + len(e) > row_length:
            rows.append([])
            used = 0
        rows[-1].append(e)
        used += len(e)
    return rows


def pack_batch(rows: list[list[Encoded]], pad_id: int, row_length: int) -> dict:
    """One packed batch ``[len(rows), row_length]``: each row's documents back to back, then its
    padding as a document of its own (labels -100)."""
    assert rows and all(rows), "empty rows"
    B, S = len(rows), row_length
    input_ids_BS = torch.full((B, S), pad_id, dtype=torch.long)
    labels_BS = torch.full((B, S), IGNORE_INDEX, dtype=torch.long)
    position_ids_BS = torch.zeros((B, S), dtype=torch.long)
    document_ids_BS = torch.zeros((B, S), dtype=torch.long)
    lengths: list[int] = []  # every document's length, padding documents included, in order
    example_of_doc: list[int] = []  # its index in the batch's examples; -1 for padding
    for b, row in enumerate(rows):
        start = 0
        for e in row:
            end = start + len(e)
            assert end <= S, f"row {b} holds {end} tokens, more than {S}"
            input_ids_BS[b, start:end] = torch.tensor(e.input_ids)
            labels_BS[b, start:end] = torch.tensor(e.labels)
            example_of_doc.append(len(example_of_doc) - example_of_doc.count(-1))
            lengths.append(len(e))
            start = end
        if start < S:
            lengths.append(S - start)
            example_of_doc.append(-1)
    # Positions restart and document ids advance at every boundary (padding documents included).
    doc = 0
    flat_positions, flat_docs = position_ids_BS.view(-1), document_ids_BS.view(-1)  # [B*S]
    offset = 0
    for n in lengths:
        flat_positions[offset : offset + n] = torch.arange(n)
        flat_docs[offset : offset + n] = doc
        offset, doc = offset + n, doc + 1
    assert offset == B * S, (offset, B, S)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    examples = [e for row in rows for e in row]
    return {
        "input_ids": input_ids_BS,
        "labels": labels_BS,
        "position_ids": position_ids_BS,
        "document_ids": document_ids_BS,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max(lengths),
        "example_of_document": torch.tensor(example_of_doc, dtype=torch.long),
        **_meta(examples),
    }


def pair_batch(
    pairs: list[tuple[Encoded, Encoded]],
    pad_id: int,
    *,
    multiple_of: int = 1,
    max_length: int | None = None,
) -> dict:
    """Critic pairs: ``{"chosen": batch, "rejected": batch}``, both padded to one length so a
    pipeline may run them as one forward pass."""
    assert pairs, "no pairs"
    for chosen, rejected in pairs:
        assert chosen.problem_id == rejected.problem_id, (chosen.problem_id, rejected.problem_id)
        assert chosen.is_correct and not rejected.is_correct, "a pair is (correct, incorrect)"
    longest = max(max(len(c), len(r)) for c, r in pairs)
    S = padded_length(longest, multiple_of, max_length)
    return {
        "chosen": pad_batch([c for c, _ in pairs], pad_id, length=S),
        "rejected": pad_batch([r for _, r in pairs], pad_id, length=S),
    }
