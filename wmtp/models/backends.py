"""The attention backends: one table, each entry knowing when it can run. Torch-free to import.

Everything that names a backend derives from :data:`BACKENDS`: the recipe's allowed values of
``model.*.attention`` (``auto`` plus these names), ``wmtp list attention``, the ranking that
``wmtp bench attention --record`` writes for ``auto``, the benchmarks and the GPU check. The
kernels themselves live in :mod:`wmtp.models.attention` (torch); an entry names its kernel and is
imported only when a model runs it.

When a backend can run is a property of the entry (:meth:`Backend.why_not`): the device type, the
dtype, and whether gradients flow through it (training) or not (a frozen model, decoding). Packed
batches (documents concatenated in a row) run on every backend; :attr:`Backend.packed` says how.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HALF_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Backend:
    """One attention backend: its kernel, what it needs, and how it handles packed batches."""

    name: str
    doc: str
    kernel: str
    """Function name in :mod:`wmtp.models.attention` (``attend(q_BSHD, k_BSKD, v_BSKD, seq)``)."""
    cuda_only: bool = False
    half_only: bool = False
    """Runs in bfloat16 / float16 only."""
    cpu_backward: bool = True
    """Has a backward on the CPU (can train there)."""
    packed: Literal["native", "masked", "per_document"] = "native"
    """Packed batches: a document-aware kernel, a masked dense one, or one call per document."""
    reads: Literal["cu_seqlens", "document_ids"] = "cu_seqlens"
    """What of a packed batch's layout the kernel reads: the documents' boundaries over the
    flattened batch, or each token's document (``SeqInfo``)."""
    probe: str | None = None
    """Function of :mod:`wmtp.models.attention` saying why the kernel is not installed (or None)."""
    min_compute_capability: int = 0
    """Oldest CUDA compute capability (major) it runs on: 8 is Ampere."""

    def facts(self) -> dict[str, str]:
        """What ``wmtp list attention`` shows of it."""
        device = (
            "CUDA"
            if self.cuda_only
            else "CUDA; CPU" + ("" if self.cpu_backward else " (forward only)")
        )
        if self.min_compute_capability:
            device += f" (compute capability {self.min_compute_capability}.0+)"
        return {
            "runs on": device,
            "dtypes": "bfloat16, float16" if self.half_only else "any",
            "packed batches": {
                "native": "document-aware kernel",
                "masked": "masked scores",
                "per_document": "one call per document (slow)",
            }[self.packed],
        }

    def why_not(self, device_type: str, dtype: str, *, training: bool) -> str | None:
        """Why this backend cannot run on ``device_type`` in ``dtype`` (``None``: it can).

        ``dtype`` is a recipe dtype name (``bfloat16``, ``float32``, ...); ``training`` says
        whether gradients flow through attention. Imports torch only for installed-kernel probes.
        """
        if self.probe is not None:
            from wmtp.models import attention

            missing = getattr(attention, self.probe)()
            if missing is not None:
                return missing
        if self.cuda_only and device_type != "cuda":
            return f"{self.name} runs on CUDA only (the device is {device_type})"
        if self.half_only and dtype not in HALF_DTYPES:
            return f"{self.name} needs bfloat16 or float16 (the dtype is {dtype})"
        if training and device_type == "cpu" and not self.cpu_backward:
            return f"{self.name} has no backward on the CPU: it cannot train there"
        if device_type == "cuda" and self.min_compute_capability:
            from wmtp.models import attention

            major = attention.compute_capability()
            if major < self.min_compute_capability:
                return (
                    f"{self.name} needs compute capability {self.min_compute_capability}.0 or newer"
                )
        return None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "eager",
            "Materialised scores, fp32 softmax, explicit masks: the reference.",
            kernel="eager_attend",
            packed="masked",
            reads="document_ids",
        ),
        Backend(
            "sdpa",
            "torch SDPA with is_causal=True and enable_gqa=True; packed batches per document.",
            kernel="sdpa_attend",
            packed="per_document",
        ),
        Backend(
            "flash_attn",
            "flash-attn (optional install): flash_attn_func, its varlen kernel for packed batches.",
            kernel="flash_attn_attend",
            cuda_only=True,
            half_only=True,
            probe="flash_attn_missing",
            min_compute_capability=8,
        ),
        Backend(
            "flex",
            "FlexAttention with causal and document block masks (compiled on CUDA; forward "
            "only on the CPU).",
            kernel="flex_attend",
            cpu_backward=False,
            reads="document_ids",
        ),
        Backend(
            "varlen",
            "torch.nn.attention.varlen.varlen_attn over rows or documents (CUDA).",
            kernel="varlen_attend",
            cuda_only=True,
            half_only=True,
            probe="varlen_missing",
        ),
    )
}
"""Every attention backend, by the name a recipe gives it."""

NAMES: tuple[str, ...] = tuple(BACKENDS)
"""Backend names in table order."""

AUTO = "auto"
CHOICES: tuple[str, ...] = (AUTO, *NAMES)
"""What ``model.*.attention`` accepts."""


def backend(name: str) -> Backend:
    """The table entry ``name``; a ComponentError listing the known ones otherwise."""
    if name in BACKENDS:
        return BACKENDS[name]
    from wmtp.errors import ComponentError
    from wmtp.recipe.errors import did_you_mean

    hints = did_you_mean(name, NAMES)
    hint = f"; did you mean {' or '.join(map(repr, hints))}?" if hints else ""
    raise ComponentError(f"unknown attention backend {name!r}{hint} (known: {', '.join(NAMES)})")


__all__ = ["AUTO", "BACKENDS", "CHOICES", "NAMES", "Backend", "backend"]
