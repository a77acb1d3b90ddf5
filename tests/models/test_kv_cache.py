"""KV-cache decoding equals the full forward, for every backend that runs here."""

from __future__ import annotations

import pytest
import torch

from wmtp.errors import RunError
from wmtp.models.kv_cache import Decoder, StaticDecoder, make_decoder
from wmtp.models.llama_mtp import LlamaMTP

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")


@pytest.mark.parametrize(
    "attention", ["eager", "sdpa", pytest.param("flex", marks=pytest.mark.slow)]
)
def test_prefill_then_steps_equal_full_forward(tiny_args, attention):
    model = LlamaMTP(tiny_args, attention=attention).eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(tokens)
    decoder = Decoder(model, batch_size=2, max_len=20)
    pieces = [decoder.prefill(tokens[:, :6])]
    pieces.append(decoder.step(tokens[:, 6:9]))  # a chunk: 3 queries against 9 keys
    pieces += [decoder.step(tokens[:, t : t + 1]) for t in range(9, 14)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rewind_replays_identically(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 8))
    decoder = Decoder(model, batch_size=1, max_len=8)
    decoder.prefill(tokens[:, :5])
    first = decoder.step(tokens[:, 5:8])
    decoder.rewind(5)
    assert decoder.length == 5
    torch.testing.assert_close(decoder.step(tokens[:, 5:8]), first)


def test_head_selection_and_overflow(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 4))
    decoder = Decoder(model, batch_size=1, max_len=5)
    only_2 = decoder.prefill(tokens, heads=[2])
    with torch.no_grad():
        torch.testing.assert_close(only_2[:, :, 0], model(tokens)[:, :, 1], atol=1e-5, rtol=1e-5)
    with pytest.raises(RunError, match="exceeds the cache length 5"):
        decoder.step(tokens[:, :2])


def test_a_decoder_keeping_head_1_runs_no_other_head(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 6))
    with torch.no_grad():
        full = model(tokens)[:, :, :1]
    assert model.n_heads > 1
    decoder = Decoder(model, batch_size=1, max_len=8, kept_heads=[1])
    ran = []
    for k in range(1, model.n_heads + 1):
        model.head_layer(k).attention.wq.register_forward_pre_hook(lambda *_, k=k: ran.append(k))
    pieces = [decoder.prefill(tokens[:, :4])] + [decoder.step(tokens[:, t : t + 1]) for t in (4, 5)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert ran == [1, 1, 1]  # head 1's layer at each call, no other head's
    with pytest.raises(AssertionError, match="keeps"):
        decoder.step(tokens[:, :1], heads=[2])


# --------------------------------------------------------------------------------------------
# StaticDecoder: fixed-shape steps (CUDA graphs on a GPU); the same numbers as the eager decoder
# --------------------------------------------------------------------------------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _decode_pieces(decoder, tokens):
    """Prefill 6, a 3-token chunk, single steps, a rewind and a replayed chunk."""
    pieces = [decoder.prefill(tokens[:, :6]), decoder.step(tokens[:, 6:9])]
    pieces += [decoder.step(tokens[:, t : t + 1]) for t in range(9, 12)]
    decoder.rewind(10)
    pieces.append(decoder.step(tokens[:, 10:14]))  # positions 10-13 again, past the old ones
    return torch.cat(pieces[:-1], dim=1)[:, :10], pieces[-1]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_static_steps_equal_full_forward(tiny_args, attention):
    model = LlamaMTP(tiny_args, attention=attention).eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(tokens)
    decoder = StaticDecoder(model, batch_size=2, max_len=16, cuda_graphs=False)
    head, replayed = _decode_pieces(decoder, tokens)
    torch.testing.assert_close(head, full[:, :10], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replayed, full[:, 10:14], atol=1e-5, rtol=1e-5)
    assert decoder.length == 14


def test_static_decoder_keeps_heads_and_checks_room(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 6))
    with torch.no_grad():
        full = model(tokens)[:, :, :1]
    decoder = StaticDecoder(model, batch_size=1, max_len=6, kept_heads=[1], cuda_graphs=False)
    pieces = [decoder.prefill(tokens[:, :4])] + [decoder.step(tokens[:, t : t + 1]) for t in (4, 5)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(RunError, match="exceeds the cache length 6"):
        decoder.step(tokens[:, :1])


def test_make_decoder_is_eager_on_cpu(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    assert type(make_decoder(model, 1, 8)) is Decoder
    assert type(make_decoder(model, 1, 8, cuda_graphs=True)) is Decoder  # no GPU, no graphs


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_steps_equal_eager_steps(tiny_args, dtype):
    torch.manual_seed(0)
    model = LlamaMTP(tiny_args, attention="sdpa").to("cuda", dtype).eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14), device="cuda")
    with torch.no_grad():
        eager = _decode_pieces(Decoder(model, batch_size=2, max_len=16), tokens)
        graphed_decoder = StaticDecoder(model, batch_size=2, max_len=16)
        graphed = _decode_pieces(graphed_decoder, tokens)
    assert graphed_decoder._captured, "no step was captured"
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for a, b in zip(graphed, eager, strict=True):
        torch.testing.assert_close(a, b, **tol)
