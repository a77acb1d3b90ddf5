"""Tiny random models and a toy detokenizer for the generation tests."""

from __future__ import annotations

import torch

from wmtp.models.args import ModelArgs


def tiny_args(n_future_tokens: int = 3, vocab_size: int = 48) -> ModelArgs:
    return ModelArgs(
        dim=32,
        n_layers=2 + n_future_tokens,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=vocab_size,
        multiple_of=16,
        max_seq_len=128,
        n_future_tokens=n_future_tokens,
    )


def make_tiny_model(n_future_tokens: int = 3, seed: int = 0, std: float = 0.3):
    """A float32 LlamaMTP with large random weights (so logits are far from ties)."""
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(seed)
    model = LlamaMTP(tiny_args(n_future_tokens), attention="eager")
    model.reset_parameters(std=std)
    return model.eval()


def letters(ids: list[int]) -> str:
    """A toy detokenizer: token i is one character."""
    return "".join(chr(ord("a") + i % 26) if i < 26 else chr(ord("A") + i % 26) for i in ids)


def synchronising_calls(run) -> list[str]:
    """``run()`` on a GPU under torch's sync debug mode: where it made the host wait for the
    device (an implicit synchronisation: a blocking copy, a read of a value), ``file:line``
    with the message, in order. Waiting on an event, as a token read does, is not one; nor is
    the notice torch gives the first time the mode is set (that it is a prototype)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [
        f"{w.filename}:{w.lineno}: {str(w.message)[:100]}"
        for w in caught
        if "synchroniz" in str(w.message) and "prototype" not in str(w.message)
    ]
