"""``wmtp export``: a trained run, checkpoint or model as a model other tools load.

``export_model`` (``wmtp.export.run``) is the entry point; each module holds one step:
``source`` (what SOURCE names, checked whole, its recipe), ``consolidate`` (weights from a
sharded DCP ``state/`` on the CPU), ``hf`` / ``formats`` (the target formats and what they can
hold), ``tokenizer_files`` (the tokenizer as ``transformers`` reads it), ``recipes`` and ``card``
(the recipes, fingerprint and model card beside the weights), ``run_info`` (training tokens and
eval results for the card). The output folder is written whole or not at all
(``wmtp.output_folder``, as :data:`EXPORT`). Importing this package needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wmtp.errors import ExportError
from wmtp.output_folder import Product, made_from

EXPORT = Product("export", "wmtp_export.json", ExportError, replacing_needs_force=True)
"""What ``wmtp export`` writes: replaced only with ``--force``, by another export."""


def exported_step(folder: Path) -> int | None:
    """The training step the ``wmtp export`` in ``folder`` was made from, as its marker records
    it (through any earlier export); None for any other folder."""
    step = made_from(folder, EXPORT).get("step")
    return step if isinstance(step, int) else None


def __getattr__(name: str) -> Any:
    if name in ("export_model", "ExportResult"):
        from wmtp.export import run

        return getattr(run, name)
    raise AttributeError(f"module 'wmtp.export' has no attribute {name!r}")


__all__ = ["EXPORT", "ExportResult", "export_model", "exported_step"]
