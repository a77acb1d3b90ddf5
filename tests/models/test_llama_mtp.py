"""The MTP transformer: layout, per-head path, packing, dtype, against a plain reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.reference import reference_mtp_logits
from wmtp.models.args import ModelArgs, RopeScaling
from wmtp.models.attention import SeqInfo
from wmtp.models.llama_mtp import LlamaMTP, rope_frequencies


def meta_params(args: ModelArgs) -> dict:
    return {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "n_future_tokens": args.n_future_tokens,
    }


def test_layout_follows_meta(tiny_args):
    model = LlamaMTP(tiny_args, attention="eager")
    assert len(model.layers) == tiny_args.n_layers - tiny_args.n_future_tokens + 1 == 3
    assert len(model.extra_heads) == 1
    assert len(model.blocks()) == tiny_args.n_layers
    assert model.head_layer(1) is model.layers[-1]
    assert model.head_layer(2) is model.extra_heads[0]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_logits_match_plain_reference(tiny_args, attention):
    model = LlamaMTP(tiny_args, attention=attention)
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 11))
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    expected = reference_mtp_logits(sd, meta_params(tiny_args), tokens)
    torch.testing.assert_close(model(tokens), expected, atol=2e-5, rtol=2e-5)


def test_head_by_head_path_equals_forward(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa")
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 9))
    h = model.trunk(tokens)
    per_head = [model.output(model.head_hidden(h, k)) for k in (1, 2)]
    torch.testing.assert_close(torch.stack(per_head, dim=2), model(tokens))
    torch.testing.assert_close(model(tokens, heads=[2])[:, :, 0], per_head[1])


def test_plain_llama_when_one_future_token(tiny_args):
    args = dataclasses.replace(tiny_args, n_future_tokens=1)
    model = LlamaMTP(args, attention="eager")
    assert len(model.extra_heads) == 0 and len(model.layers) == args.n_layers
    tokens = torch.randint(0, args.vocab_size, (1, 7))
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    expected = reference_mtp_logits(sd, meta_params(args), tokens)
    torch.testing.assert_close(model(tokens), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_batch_equals_documents_alone(tiny_args, attention):
    model = LlamaMTP(tiny_args, attention=attention)
    lengths = [5, 4, 3]
    seq = SeqInfo.packed([lengths])
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 12))
    packed = model(tokens, seq)
    docs = torch.split(tokens, lengths, dim=1)
    alone = torch.cat([model(doc) for doc in docs], dim=1)
    torch.testing.assert_close(packed, alone, atol=2e-5, rtol=2e-5)


def test_gradients_sdpa_equal_eager(tiny_args):
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 10))
    grads = []
    for attention in ("eager", "sdpa"):
        torch.manual_seed(3)
        model = LlamaMTP(tiny_args, attention=attention)
        model(tokens).float().logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-4, rtol=1e-4, msg=name)


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies(tiny_args):
    scaling = RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
    )
    args = dataclasses.replace(tiny_args, dim=128, n_heads=2, n_kv_heads=1, rope_scaling=scaling)
    plain = rope_frequencies(dataclasses.replace(args, rope_scaling=None))
    scaled = rope_frequencies(args)
    wavelen = 2 * torch.pi / plain
    high = wavelen < 64 / 4
    low = wavelen > 64 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / 8)
    mid = ~high & ~low
    assert bool(((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 8)).all())


def test_bfloat16_smoke_on_cpu(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").to(torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = model(torch.randint(0, tiny_args.vocab_size, (2, 8)))
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 8, 2, tiny_args.vocab_size)
    assert torch.isfinite(logits.float()).all()
    logits.float().sum().backward()


def test_right_padded_rows_match_unpadded_rows(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa")
    short = torch.randint(1, tiny_args.vocab_size, (1, 5))
    long = torch.randint(1, tiny_args.vocab_size, (1, 9))
    batch = {
        "input_ids": torch.cat([torch.nn.functional.pad(short, (0, 4)), long]),
        "attention_mask": torch.tensor([[1] * 5 + [0] * 4, [1] * 9]).bool(),
    }
    seq = SeqInfo.from_batch(batch)
    with torch.no_grad():
        padded = model(batch["input_ids"], seq)
        torch.testing.assert_close(padded[:1, :5], model(short), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(padded[1:], model(long), atol=1e-5, rtol=1e-5)


def test_set_heads_drops_heads_and_adds_copies_of_head_one(tiny_args):
    model = LlamaMTP(tiny_args)  # 2 heads
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 6))
    with torch.no_grad():
        before = model(tokens)
        model.set_heads(4)
        after = model(tokens)
    assert model.n_heads == 4 and model.args.n_layers == tiny_args.n_layers + 2
    torch.testing.assert_close(after[:, :, :2], before)
    torch.testing.assert_close(after[:, :, 2], before[:, :, 0])  # a new head is head 1's copy
    model.set_heads(1)
    assert model.n_heads == 1 and len(model.extra_heads) == 0
