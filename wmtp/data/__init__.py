"""Data: tokenizers, JSONL datasets with metadata, samplers, collators, the HumanEval builder.

Torch-free to import: every name loads its module on first use (only ``collate`` needs torch).
"""

from __future__ import annotations

from wmtp._lazy import lazy_getattr

_LAZY = {
    # name -> module that defines it
    "Tokenizer": "wmtp.data.tokenizers",
    "ByteTokenizer": "wmtp.data.tokenizers",
    "SentencePieceTokenizer": "wmtp.data.tokenizers",
    "HFTokenizer": "wmtp.data.tokenizers",
    "load_tokenizer": "wmtp.data.tokenizers",
    "Example": "wmtp.data.examples",
    "Encoded": "wmtp.data.examples",
    "IGNORE_INDEX": "wmtp.data.examples",
    "encode_example": "wmtp.data.examples",
    "format_prompt": "wmtp.data.examples",
    "pad_batch": "wmtp.data.collate",
    "pack_rows": "wmtp.data.collate",
    "pack_batch": "wmtp.data.collate",
    "pair_batch": "wmtp.data.collate",
    "JsonlFile": "wmtp.data.jsonl",
    "write_jsonl": "wmtp.data.jsonl",
    "index_jsonl": "wmtp.data.metadata",
    "JsonlDataset": "wmtp.data.dataset",
    "TrainData": "wmtp.data.dataset",
    "make_train_data": "wmtp.data.dataset",
    "build_humaneval": "wmtp.data.humaneval",
    "ensure_humaneval": "wmtp.data.humaneval",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
