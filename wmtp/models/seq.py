"""How the tokens of a batch are laid out: plain, right-padded, or packed documents.

The attention backends and the model read it (``wmtp.models.attention.SeqInfo`` re-exports it);
the data collators produce the fields it validates (see the batch contract in DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import torch

from wmtp.errors import DataError


@dataclass(frozen=True)
class SeqInfo:
    """How the tokens of a ``[B, S]`` batch are laid out (``None`` fields: not given).

    ``cu_seqlens`` (int32 ``[D+1]``) are document boundaries over the *flattened* ``B*S`` tokens;
    they cover every token (padding at the end of a row is a document of its own) and every row
    start is a boundary. ``document_ids`` (``[B, S]``) give each token's document, equal ids
    attend to each other. ``position_ids`` (``[B, S]``) drive RoPE, restarting at 0 per document.
    """

    position_ids: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None
    document_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # collators may hand max_seqlen over as a tensor; kernels want a Python int
        object.__setattr__(self, "max_seqlen", _as_int(self.max_seqlen))

    @property
    def is_packed(self) -> bool:
        return self.cu_seqlens is not None or self.document_ids is not None

    @classmethod
    def from_batch(cls, batch: dict) -> SeqInfo | None:
        """The layout of a data batch (see the batch contract); ``None`` for a plain batch."""
        if "cu_seqlens" in batch or "document_ids" in batch:
            seq = cls(
                position_ids=batch.get("position_ids"),
                cu_seqlens=batch.get("cu_seqlens"),
                max_seqlen=batch.get("max_seqlen"),
                document_ids=batch.get("document_ids"),
            )
            seq.validate(tuple(batch["input_ids"].shape))
            return seq
        mask = batch.get("attention_mask")
        if mask is not None:
            _check_right_padded(mask)
        if batch.get("position_ids") is not None:
            return cls(position_ids=batch["position_ids"])
        return None

    @classmethod
    def packed(
        cls, lengths_per_row: list[list[int]], device: str | torch.device = "cpu"
    ) -> SeqInfo:
        """A packed layout from document lengths per row (every row must have the same total)."""
        totals = {sum(row) for row in lengths_per_row}
        assert len(totals) == 1, f"rows of a packed batch differ in length: {totals}"
        lengths = [n for row in lengths_per_row for n in row]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        positions = torch.cat([torch.arange(n) for n in lengths]).view(len(lengths_per_row), -1)
        doc_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        return cls(
            position_ids=positions.to(device),
            cu_seqlens=cu.to(device),
            max_seqlen=max(lengths),
            document_ids=doc_ids.view(len(lengths_per_row), -1).to(device),
        )

    def validate(self, shape_BS: tuple[int, int]) -> None:
        """Raise :class:`DataError` when the fields disagree with each other or the batch shape."""
        B, S = shape_BS
        for name in ("position_ids", "document_ids"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (B, S):
                raise DataError(f"{name} has shape {tuple(t.shape)}, input_ids has {(B, S)}")
        if self.cu_seqlens is not None:
            cu = self.cu_seqlens.tolist()
            if cu[0] != 0 or cu[-1] != B * S or any(b <= a for a, b in pairwise(cu)):
                raise DataError(
                    f"cu_seqlens must rise strictly from 0 to B*S={B * S}; got {cu[:8]}..{cu[-2:]}"
                )
            missing = sorted(set(range(0, B * S, S)) - set(cu))
            if missing:
                raise DataError(f"cu_seqlens: a document crosses a row start at token {missing[0]}")

    def cu_seqlens_for(self, B: int, S: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """Document boundaries over the flattened batch, derived from document_ids if needed."""
        if self.cu_seqlens is not None:
            max_len = self.max_seqlen or int(self.cu_seqlens.diff().max())
            return self.cu_seqlens.to(device=device, dtype=torch.int32), max_len
        if self.document_ids is None:  # one document per row
            cu = torch.arange(0, (B + 1) * S, S, device=device, dtype=torch.int32)
            return cu, S
        ids_BS = self.document_ids.to(device)
        starts_BS = torch.ones_like(ids_BS, dtype=torch.bool)
        starts_BS[:, 1:] = ids_BS[:, 1:] != ids_BS[:, :-1]
        starts_T = starts_BS.flatten().nonzero().flatten()
        cu = torch.cat([starts_T, torch.tensor([B * S], device=device)]).to(torch.int32)
        return cu, int(cu.diff().max())

    def document_ids_for(self, B: int, S: int, device: torch.device) -> torch.Tensor:
        """Document id of every token ``[B, S]``, derived from cu_seqlens if needed."""
        if self.document_ids is not None:
            return self.document_ids.to(device)
        if self.cu_seqlens is None:
            return torch.zeros(B, S, dtype=torch.long, device=device)
        token_T = torch.arange(B * S, device=device)
        ids_T = torch.searchsorted(self.cu_seqlens.to(device).long()[1:], token_T, right=True)
        return ids_T.view(B, S)  # [B*S] -> [B, S]

    def by_document_ids(self) -> SeqInfo:
        """This layout without ``cu_seqlens`` and ``max_seqlen`` where ``document_ids`` say the
        same: their length and value change with every packed batch, and compiled blocks
        (static shapes; Dynamo guards on both) would compile anew for each count of documents."""
        if self.document_ids is None:
            return self
        return replace(self, cu_seqlens=None, max_seqlen=None)

    def to(self, device: torch.device | str) -> SeqInfo:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("position_ids", "cu_seqlens", "document_ids")
            if getattr(self, name) is not None
        }
        return replace(self, **moved)


def _as_int(value) -> int | None:
    if value is None:
        return None
    return int(value.max()) if isinstance(value, torch.Tensor) else int(value)


def _check_right_padded(mask_BS: torch.Tensor) -> None:
    mask = mask_BS.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        row = int((mask[:, 1:] & ~mask[:, :-1]).any(dim=1).nonzero()[0])
        raise DataError(
            f"attention_mask row {row} has a real token after padding: only right padding is "
            "supported (causal attention is then exact for the real tokens)"
        )


__all__ = ["SeqInfo"]
