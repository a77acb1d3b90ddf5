"""Every backend that runs on this CPU against the eager reference: outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from tests.gpu import needs_cuda
from wmtp.errors import ComponentError, DataError
from wmtp.models.attention import (
    SeqInfo,
    eager_attend,
    flex_attend,
    resolve,
    sdpa_attend,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")


def qkv(B=2, S=12, H=4, K=2, D=8, Sk=None, grad=False):
    Sk = Sk or S
    q = torch.randn(B, S, H, D, requires_grad=grad)
    k = torch.randn(B, Sk, K, D, requires_grad=grad)
    v = torch.randn(B, Sk, K, D, requires_grad=grad)
    return q, k, v


def naive_attention(q, k, v, allowed_BQK):
    """Loop-free textbook attention with an explicit allowed mask; GQA by index arithmetic."""
    H, D = q.shape[2:]
    out = torch.zeros_like(q)
    for h in range(H):
        kv = h // (H // k.shape[2])
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / D**0.5  # [B, Sq, Sk]
        scores = scores.masked_fill(~allowed_BQK, float("-inf"))
        out[:, :, h] = scores.softmax(-1) @ v[:, :, kv]
    return out


def test_eager_matches_textbook_causal_gqa():
    q, k, v = qkv()
    allowed = torch.ones(12, 12).tril().bool().expand(2, 12, 12)
    torch.testing.assert_close(eager_attend(q, k, v), naive_attention(q, k, v, allowed))


def test_eager_bottom_right_alignment_when_keys_are_longer():
    q, k, v = qkv(S=3, Sk=10)
    allowed = torch.ones(10, 10).tril().bool()[-3:].expand(2, 3, 10)
    torch.testing.assert_close(eager_attend(q, k, v), naive_attention(q, k, v, allowed))


def test_eager_packed_masks_other_documents():
    seq = SeqInfo.packed([[5, 4, 3], [12]])
    q, k, v = qkv()
    doc = seq.document_ids
    allowed = torch.ones(12, 12).tril().bool() & (doc[:, :, None] == doc[:, None, :])
    torch.testing.assert_close(eager_attend(q, k, v, seq), naive_attention(q, k, v, allowed))


def grads_of(fn, q, k, v, seq=None):
    out = fn(q, k, v, seq)
    torch.manual_seed(1)
    (out * torch.randn(out.shape)).sum().backward()
    return out.detach(), [t.grad.clone() for t in (q, k, v)]


@pytest.mark.parametrize(
    "layout",
    ["plain", "packed", "packed_cu_only", "packed_ids_only", "no_gqa"],
)
def test_sdpa_matches_eager_with_gradients(layout):
    K = 4 if layout == "no_gqa" else 2
    seq = None
    if layout.startswith("packed"):
        full = SeqInfo.packed([[5, 4, 3], [7, 5]])
        seq = {
            "packed": full,
            "packed_cu_only": SeqInfo(cu_seqlens=full.cu_seqlens),
            "packed_ids_only": SeqInfo(document_ids=full.document_ids),
        }[layout]
    base = qkv(K=K, grad=True)
    twin = [t.detach().clone().requires_grad_() for t in base]
    out_ref, grads_ref = grads_of(eager_attend, *base, seq)
    out, grads = grads_of(sdpa_attend, *twin, seq)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_padded_rows_are_exact_for_real_tokens():
    """Right padding + causal: real tokens of a padded row equal the row alone."""
    q, k, v = qkv(B=1, S=12)
    out_padded = sdpa_attend(q, k, v, None)
    out_alone = eager_attend(q[:, :7], k[:, :7], v[:, :7])
    torch.testing.assert_close(out_padded[:, :7], out_alone, atol=1e-5, rtol=1e-5)


def test_sdpa_decoding_shapes_match_eager():
    for Sq in (1, 3):
        q, k, v = qkv(S=Sq, Sk=9)
        torch.testing.assert_close(
            sdpa_attend(q, k, v), eager_attend(q, k, v), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("packed", [False, True])
def test_flex_forward_matches_eager_on_cpu(packed):
    seq = SeqInfo.packed([[5, 4, 3], [7, 5]]) if packed else None
    q, k, v = qkv()
    with torch.no_grad():
        torch.testing.assert_close(
            flex_attend(q, k, v, seq), eager_attend(q, k, v, seq), atol=1e-5, rtol=1e-5
        )


def test_flex_refuses_gradients_on_cpu_with_a_reason():
    q, k, v = qkv(grad=True)
    with pytest.raises(ComponentError, match="no backward on cpu"):
        flex_attend(q, k, v, None)


def test_varlen_on_cpu_is_an_error_naming_why(monkeypatch):
    monkeypatch.delenv("WMTP_ATTENTION", raising=False)
    with pytest.raises(ComponentError, match=r"varlen.*(CUDA|no torch\.nn\.attention\.varlen)"):
        resolve("varlen", "cpu", torch.bfloat16, training=False)


def test_auto_picks_sdpa_on_cpu_and_says_why(monkeypatch):
    monkeypatch.delenv("WMTP_ATTENTION", raising=False)
    chosen = resolve("auto", "cpu", torch.float32, training=True)
    assert (chosen.plain, chosen.packed, chosen.name) == ("sdpa", "sdpa", "sdpa")
    assert "auto (the recipe): sdpa on cpu" in chosen.reason


def test_env_override_wins(monkeypatch):
    monkeypatch.setenv("WMTP_ATTENTION", "eager")
    chosen = resolve("sdpa", "cpu", torch.float32, training=True)
    assert (chosen.name, "WMTP_ATTENTION=eager" in chosen.reason) == ("eager", True)


def test_flash_attn_explicit_request_errors_without_cuda():
    with pytest.raises(ComponentError, match="flash_attn"):
        resolve("flash_attn", "cpu", torch.bfloat16, training=False)


def test_flex_on_cpu_runs_frozen_models_but_cannot_train(monkeypatch):
    monkeypatch.delenv("WMTP_ATTENTION", raising=False)
    assert resolve("flex", "cpu", "float32", training=False).name == "flex"
    with pytest.raises(ComponentError, match="flex has no backward on the CPU"):
        resolve("flex", "cpu", "float32", training=True)


def test_unknown_backend_is_a_component_error_with_a_suggestion():
    with pytest.raises(ComponentError, match=r"unknown attention backend 'flashy'.*'flash_attn'"):
        resolve("flashy", "cpu", torch.float32, training=False)


def test_every_name_the_recipe_accepts_is_a_backend_of_the_table_or_auto():
    import typing

    from wmtp.models.backends import BACKENDS
    from wmtp.recipe.schema import Attention

    assert set(typing.get_args(Attention)) == {"auto", *BACKENDS}


def test_from_batch_refuses_left_padding():
    batch = {
        "input_ids": torch.zeros(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]).bool(),
    }
    with pytest.raises(DataError, match="row 1"):
        SeqInfo.from_batch(batch)
    batch["attention_mask"] = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    assert SeqInfo.from_batch(batch) is None


def test_from_batch_packed_validates_boundaries():
    seq = SeqInfo.packed([[3, 5], [8]])
    batch = {
        "input_ids": torch.zeros(2, 8, dtype=torch.long),
        "position_ids": seq.position_ids,
        "cu_seqlens": torch.tensor([0, 3, 10, 16], dtype=torch.int32),  # crosses row start 8
        "max_seqlen": 7,
        "document_ids": seq.document_ids,
    }
    with pytest.raises(DataError, match="crosses a row start at token 8"):
        SeqInfo.from_batch(batch)
    batch["cu_seqlens"] = seq.cu_seqlens
    assert SeqInfo.from_batch(batch).is_packed


def test_max_seqlen_given_as_a_tensor_becomes_an_int():
    seq = SeqInfo(cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32), max_seqlen=torch.tensor(5))
    assert seq.max_seqlen == 5 and isinstance(seq.max_seqlen, int)


def test_flex_block_mask_follows_each_new_layout():
    """Masks are reused across the layers of one batch, never across batches."""
    q, k, v = qkv()
    with torch.no_grad():
        for lengths in ([[5, 4, 3], [7, 5]], [[2, 10], [12]], [[5, 4, 3], [7, 5]]):
            seq = SeqInfo.packed(lengths)
            for _ in range(2):  # two "layers"
                torch.testing.assert_close(
                    flex_attend(q, k, v, seq), eager_attend(q, k, v, seq), atol=1e-5, rtol=1e-5
                )


def test_eager_stays_fp32_under_autocast():
    q, k, v = qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = eager_attend(q, k, v)
    torch.testing.assert_close(out, eager_attend(q, k, v))


@needs_cuda("auto consults the GPU's ranking on CUDA only")
def test_auto_on_a_gpu_without_flash_attn_is_sdpa_with_flex_for_packed_batches(monkeypatch):
    from wmtp.models.attention import ResolvedAttention, flash_attn_missing

    monkeypatch.delenv("WMTP_ATTENTION", raising=False)
    if flash_attn_missing() is None:
        pytest.skip("flash_attn is importable here: auto picks it")
    chosen = resolve("auto", "cuda", torch.bfloat16, training=True)
    assert isinstance(chosen, ResolvedAttention) and chosen.packed == "flex"


def test_a_resolved_pair_runs_packed_batches_on_its_second_backend():
    from wmtp.models.attention import ResolvedAttention

    torch.manual_seed(0)
    q = torch.randn(1, 12, 4, 8)
    k, v = torch.randn(1, 12, 2, 8), torch.randn(1, 12, 2, 8)
    packed = SeqInfo.packed([[5, 7]])
    pair = ResolvedAttention("sdpa", "eager", "test")
    assert pair.name == "sdpa (eager for packed batches)"
    with torch.no_grad():
        torch.testing.assert_close(pair.attend(q, k, v, packed), eager_attend(q, k, v, packed))
        torch.testing.assert_close(pair.attend(q, k, v), eager_attend(q, k, v))


@pytest.mark.parametrize("name", ["eager", "sdpa", "flex"])
def test_the_layout_a_backend_reads_gives_what_the_whole_layout_gives(name):
    """``ResolvedAttention.layout``: backends that read document ids (``Backend.reads``) get a
    packed batch without ``cu_seqlens`` / ``max_seqlen`` (whose length and value change with
    every batch: compiled blocks would compile anew), and attend exactly as with the whole
    layout; the others keep it whole."""
    from wmtp.models.attention import ResolvedAttention
    from wmtp.models.backends import backend

    torch.manual_seed(0)
    q, k, v = qkv()
    seq = SeqInfo.packed([[5, 4, 3], [2, 10]])
    resolved = ResolvedAttention.fixed(name)
    layout = resolved.layout(seq)
    if backend(name).reads == "document_ids":
        assert layout.cu_seqlens is None and layout.max_seqlen is None
        assert torch.equal(layout.document_ids, seq.document_ids)
    else:
        assert layout is seq
    with torch.no_grad():
        torch.testing.assert_close(resolved.attend(q, k, v, layout), resolved.attend(q, k, v, seq))
