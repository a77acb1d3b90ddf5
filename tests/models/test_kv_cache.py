"""KV-cache decoding equals the full forward, for every backend that runs here."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import pytest
import torch

from tests.gpu import needs_cuda
from wmtp.errors import RunError
from wmtp.models.kv_cache import (
    Chained,
    Decoder,
    StaticDecoder,
    cache_length,
    make_decoder,
    setup_figures,
    step_state,
)
from wmtp.models.llama_mtp import LlamaMTP

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning"),
    pytest.mark.minutes(2),
]


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


@pytest.mark.parametrize("prompt", [1, 40, 63, 64])
def test_a_static_decoders_padded_prefill_equals_the_full_forward(tiny_args, prompt):
    """``StaticDecoder.prefill`` pads the prompt to a multiple of ``PREFILL_MULTIPLE`` and runs
    the fixed-shape step (captured on a GPU): its logits are the full forward's, the padding's
    keys are hidden and overwritten by the steps after it, and steps then continue as the full
    forward does; a second prompt of the same padded length takes no new step shape; with
    ``last`` it gives the last position's logits alone."""
    from wmtp.models.kv_cache import PREFILL_MULTIPLE

    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    length = min(prompt + 3, tiny_args.max_seq_len)
    tokens = torch.randint(0, tiny_args.vocab_size, (2, length))
    with torch.no_grad():
        full = model(tokens)
    decoder = StaticDecoder(model, 2, tiny_args.max_seq_len, cuda_graphs=False)
    assert len(decoder._state.keys_L) >= -(-prompt // PREFILL_MULTIPLE) * PREFILL_MULTIPLE
    pieces = [decoder.prefill(tokens[:, :prompt])]
    pieces += [decoder.step(tokens[:, t : t + 1]) for t in range(prompt, length)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    prepared = len(decoder._state.prepared)
    other = StaticDecoder(model, 2, tiny_args.max_seq_len, cuda_graphs=False)
    other.prefill(tokens[:, : max(1, prompt - 1)])  # the same padded length
    assert len(other._state.prepared) == prepared
    last = StaticDecoder(model, 2, tiny_args.max_seq_len, cuda_graphs=False)
    at_last = last.prefill(tokens[:, :prompt], last=True)  # the graph keeps one position
    torch.testing.assert_close(at_last, full[:, prompt - 1 : prompt], atol=1e-5, rtol=1e-5)
    assert last.length == prompt


@pytest.mark.parametrize("static", [False, True])
def test_a_prefill_for_the_last_position_unembeds_that_position_alone(tiny_args, static):
    """``prefill(last=True)`` (every prompt of generate, speculative decoding and eval) sends one
    position through the final norm and the unembedding, not the whole prompt, and its logits
    are the full forward's at that position."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 40))
    with torch.no_grad():
        full = model(tokens)
    unembedded = []
    model.output.register_forward_hook(lambda _, args, __: unembedded.append(args[0].shape[:3]))
    decoder = StaticDecoder(model, 2, 64, cuda_graphs=False) if static else Decoder(model, 2, 64)
    at_last = decoder.prefill(tokens, last=True)
    torch.testing.assert_close(at_last, full[:, -1:], atol=1e-5, rtol=1e-5)
    assert unembedded == [(2, 1, model.n_heads)]
    assert decoder.length == 40


def test_a_prefill_that_continues_or_whose_padding_does_not_fit_runs_eagerly(tiny_args):
    """A prompt continued after earlier tokens (here also near the cache's end, where its
    padding would not fit) is forwarded eagerly: the eager decoder's logits, and no prompt step
    prepared for it."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 90))
    decoder, eager = StaticDecoder(model, 1, 90, cuda_graphs=False), Decoder(model, 1, 90)
    cache = len(decoder._state.keys_L)
    assert cache == 128  # 70 tokens pad to 128: they fit; 20 more from 70 pad to 64: they do not
    for chunk in (tokens[:, :70], tokens[:, 70:90]):
        torch.testing.assert_close(
            decoder.prefill(chunk), eager.prefill(chunk), atol=1e-5, rtol=1e-5
        )
    assert decoder.length == 90
    assert {key[0] for key in decoder._state.prepared} == {128}


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


def test_every_head_shares_one_norm_and_unembedding_call(tiny_args):
    """A verify step's heads go through the final norm and the unembedding together: one
    matmul for all heads, not one per head."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    calls = []
    model.output.register_forward_hook(lambda _, __, out: calls.append(tuple(out.shape)))
    decoder = Decoder(model, batch_size=1, max_len=8)
    decoder.prefill(torch.randint(0, tiny_args.vocab_size, (1, 4)))
    decoder.step(torch.randint(0, tiny_args.vocab_size, (1, 3)))
    V = tiny_args.vocab_size
    assert calls == [(1, 4, 2, V), (1, 3, 2, V)]


# --------------------------------------------------------------------------------------------
# StaticDecoder: fixed-shape steps (CUDA graphs on a GPU); the same numbers as the eager decoder
# --------------------------------------------------------------------------------------------

CUDA = needs_cuda("CUDA graphs need a GPU")


def _decode_pieces(decoder, tokens):
    """Prefill 6, a 3-token chunk, single steps, a rewind and a replayed chunk."""
    pieces = [decoder.prefill(tokens[:, :6]), decoder.step(tokens[:, 6:9])]
    pieces += [decoder.step(tokens[:, t : t + 1]) for t in range(9, 12)]
    decoder.rewind(10)
    pieces.append(decoder.step(tokens[:, 10:14]))  # positions 10-13 again, past the old ones
    return torch.cat(pieces[:-1], dim=1)[:, :10], pieces[-1]


def _single_steps(decoder, tokens):
    """Prefill 6, single steps, a rewind and single steps again, past the old positions: two
    step shapes, so a compiled decoder compiles two graphs (Inductor's C++ on the CPU takes
    seconds a graph)."""
    pieces = [decoder.prefill(tokens[:, :6])]
    pieces += [decoder.step(tokens[:, t : t + 1]) for t in range(6, 11)]
    decoder.rewind(8)
    replayed = [decoder.step(tokens[:, t : t + 1]) for t in range(8, 14)]
    return torch.cat(pieces, dim=1), torch.cat(replayed, dim=1)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("fused", [False, True])
def test_static_steps_equal_full_forward(tiny_args, attention, fused):
    model = LlamaMTP(tiny_args, attention=attention).eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(tokens)
    decoder = StaticDecoder(model, batch_size=2, max_len=16, cuda_graphs=False, fused=fused)
    assert decoder.fused == fused
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


def test_make_decoder_is_eager_on_cpu_unless_compiled(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    assert type(make_decoder(model, 1, 8)) is Decoder
    assert type(make_decoder(model, 1, 8, cuda_graphs=True)) is Decoder  # no GPU, no graphs
    compiled = make_decoder(model, 1, 8, compiled=True)
    assert type(compiled) is StaticDecoder and compiled.compiled and not compiled.cuda_graphs
    apart = make_decoder(model, 2, 8, rows_apart=True)  # per-row starts: the fixed-shape step
    assert type(apart) is StaticDecoder and not apart.compiled and not apart.cuda_graphs


def test_rows_at_one_position_equal_the_shared_step_exactly(tiny_args):
    """``step_rows`` with every row's position at ``length`` is the shared-position step, bit
    for bit."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (3, 9))
    decoder = StaticDecoder(model, batch_size=3, max_len=9, cuda_graphs=False)
    decoder.prefill(tokens[:, :5])
    shared = decoder.step(tokens[:, 5:8])
    decoder.positions.fill_(5)
    assert torch.equal(decoder.step_rows(tokens[:, 5:8]), shared)


def test_rows_apart_equal_the_full_forward(tiny_args):
    """Rows advancing by different numbers of tokens per fixed-shape step (as batched
    speculative decoding's rows do: each step feeds 3 tokens to every row, a row keeps some and
    its next step starts after them, overwriting the rest) see the full forward's logits."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (3, 18))
    with torch.no_grad():
        full = model(tokens)
    decoder = StaticDecoder(model, batch_size=3, max_len=18, cuda_graphs=False)
    torch.testing.assert_close(decoder.prefill(tokens[:, :5]), full[:, :5], atol=1e-5, rtol=1e-5)
    starts = [5, 5, 5]
    for kept in ([1, 3, 2], [1, 3, 3], [2, 1, 3], [1, 3, 1]):
        fed = torch.stack([tokens[b, s : s + 3] for b, s in enumerate(starts)])
        decoder.positions.copy_(torch.tensor(starts))
        logits = decoder.step_rows(fed)
        for b, s in enumerate(starts):
            torch.testing.assert_close(logits[b], full[b, s : s + 3], atol=1e-5, rtol=1e-5)
        starts = [s + k for s, k in zip(starts, kept, strict=True)]
    assert starts == [10, 15, 14]


@dataclass(frozen=True)
class _ArgmaxSkipping:
    """A chained tail for the test below: every row feeds its head-1 argmax ``S`` times next,
    and row b moves on by ``b + 1`` (at most ``S``); it returns the logits."""

    def __call__(self, tokens_BS, logits_BSnV, room_B):
        S = tokens_BS.shape[1]
        next_BS = logits_BSnV[:, -1, 0].argmax(dim=-1)[:, None].expand(-1, S).clone()
        advance_B = torch.arange(1, len(room_B) + 1, device=room_B.device).clamp(max=S)
        return Chained(next_BS, advance_B, (logits_BSnV,))


@pytest.mark.parametrize("compiled", [False, True])
def test_chained_steps_are_steps_whose_tail_updates_the_rows(tiny_args, compiled):
    """``chain_rows`` is ``step_rows`` of the ``fed`` tokens followed by what its tail says,
    done inside the step: the next tokens fed, each row's position moved by its advance (kept
    within the cache's last S positions) and its budget lowered by as much. Compiled (a first
    run that compiles, and must leave the rows as they were) and eager chains agree."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    B, S, P = 3, 2, 4
    tokens = torch.randint(0, tiny_args.vocab_size, (B, P + S))

    def started(**steps):  # each on its own copy of the model: its own caches
        decoder = StaticDecoder(copy.deepcopy(model), B, 16, cuda_graphs=False, **steps)
        decoder.prefill(tokens[:, :P])
        decoder.positions.fill_(P)
        decoder.room.fill_(9)
        decoder.fed(S).copy_(tokens[:, P:])
        return decoder

    reference, chained = started(), started(compiled=compiled)
    L = len(chained._state.keys_L)
    for _ in range(L // 2):  # far enough for row 2 to reach the cache's end
        fed_BS = reference.fed(S).clone()
        logits = reference.step_rows(fed_BS)
        next_BS, advance_B, _ = _ArgmaxSkipping()(fed_BS, logits, reference.room)
        reference.fed(S).copy_(next_BS)
        reference.positions.add_(advance_B).clamp_(max=L - S)
        reference.room.sub_(advance_B)
        (chained_logits,) = chained.chain_rows(S, tail=_ArgmaxSkipping())
        torch.testing.assert_close(chained_logits, logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(chained.fed(S), reference.fed(S))
        assert torch.equal(chained.positions, reference.positions)
        assert torch.equal(chained.room, reference.room)
    assert chained.positions.tolist() == [P + L // 2, L - S, L - S]
    assert chained.room.tolist() == [9 - L // 2, 9 - L, 9 - L]


def test_cache_lengths_are_shared_by_nearby_prompts():
    assert cache_length(20, 2048) == cache_length(256, 2048) == 256
    assert cache_length(300, 2048) == cache_length(512, 2048) == 512
    assert cache_length(300, 400) == 512  # never past the model's length in whole blocks ...
    assert cache_length(3000, 2048) == 3072  # ... unless asked for


@pytest.mark.parametrize(("flavour", "early"), [("llama-1b-bench", True), ("llama2-7b-mtp", False)])
def test_a_small_models_steps_launch_early_and_a_large_ones_do_not(flavour, early):
    """Programmatic dependent launch paid at 1B (+2.5%) and cost at 7B (-2.3%): the measured
    shapes, four heads each, on either side of the rule (no weights are made: meta tensors)."""
    from wmtp.eval.speed import model_from_flavour
    from wmtp.models.kv_cache import PDL_MAX_MODEL_BYTES, launches_early

    model = model_from_flavour(flavour, n_future_tokens=4, dtype="bfloat16", device="meta")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert launches_early(model) is early is (size <= PDL_MAX_MODEL_BYTES)


def test_a_cpu_state_never_launches_early(tiny_args):
    """The tiny model is small, but its state's steps compile without PDL off a GPU."""
    model = LlamaMTP(tiny_args).eval()
    state = step_state(model, 1, 32, (1,), (False, True, False))
    assert not state.pdl and state.skip_blocks is False


def test_static_decoders_of_one_shape_share_their_state(tiny_args):
    """A new decoder of the same model and shape takes over the caches and prepared steps
    (where the CUDA graphs live), gives the same numbers, and the older one may not go on."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 8))
    first = StaticDecoder(model, batch_size=1, max_len=8, cuda_graphs=False)
    first.prefill(tokens[:, :5])
    expected = first.step(tokens[:, 5:6])
    second = StaticDecoder(model, batch_size=1, max_len=10, cuda_graphs=False)
    assert second.trunk_caches is first.trunk_caches
    assert setup_figures(model)["step_states"] == 1
    second.prefill(tokens[:, :5])
    torch.testing.assert_close(second.step(tokens[:, 5:6]), expected)
    with pytest.raises(AssertionError, match="took over the caches"):
        first.step(tokens[:, 6:7])
    other_batch = StaticDecoder(model, batch_size=2, max_len=8, cuda_graphs=False)
    assert other_batch.trunk_caches is not first.trunk_caches


def _storages_read(step) -> tuple[set[int], set[int]]:
    """The storages ``step()`` reads and those it makes, seen op by op (aten level)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    read, made = set(), set()

    def storages(tree) -> set[int]:
        leaves = tree_leaves(tree)
        return {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            read.update(storages((args, kwargs)) - made)
            out = func(*args, **(kwargs or {}))
            made.update(storages(out))
            return out

    with Record():
        step()
    return read, made


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_reads_only_what_outlives_its_decoder(tiny_args, fused):
    """A CUDA graph replays the addresses its capture read, for every later decoder of the
    shape: a step may read the model's tensors, its state's, the model's fused projections and
    its input, never a tensor of the decoder that captured it (freed with that decoder, its
    memory reused)."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 6))
    decoder = StaticDecoder(model, 1, 6, cuda_graphs=False, fused=fused)
    decoder.prefill(tokens[:, :5])
    state = decoder._state
    owned = [*model.parameters(), *model.buffers(), state.start, state.keys_L, state.inv_freq_F]
    for c in [*state.caches[0], *state.caches[1].values()]:
        owned += [c.k_BSKD, c.v_BSKD, *([c.fused.wqkv, c.fused.w13] if c.fused else [])]
    assert all(c.fused is not None for c in state.caches[0]) == fused
    stacked = decoder._stacked  # the heads' layers, stacked: the model's fused copy too
    assert (stacked is not None) == fused
    if stacked is not None:
        owned += [stacked.wqkv, stacked.wo, stacked.w13, stacked.w2]
        owned += [stacked.attention_norm, stacked.ffn_norm]
    step_input = tokens[:, 5:].clone()
    allowed = {t.untyped_storage().data_ptr() for t in [*owned, step_input]}
    with torch.no_grad():
        read, _ = _storages_read(lambda: decoder.step(step_input))
    assert read <= allowed, "the step reads tensors that die with its decoder"


def test_a_state_made_under_inference_mode_serves_later_decoders(tiny_args):
    """``generate`` runs under inference mode; the caches it leaves behind are ordinary
    tensors, which a decoder outside inference mode may still write."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 6))
    with torch.inference_mode():
        StaticDecoder(model, 1, 6, cuda_graphs=False).prefill(tokens[:, :5])
    decoder = StaticDecoder(model, 1, 6, cuda_graphs=False)
    decoder.prefill(tokens[:, :5])
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(decoder.step(tokens[:, 5:]), full[:, 5:], atol=1e-5, rtol=1e-5)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_steps_equal_eager_steps(tiny_args, dtype):
    torch.manual_seed(0)
    model = LlamaMTP(tiny_args, attention="sdpa").to("cuda", dtype).eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14), device="cuda")
    with torch.no_grad():
        eager = _decode_pieces(Decoder(model, batch_size=2, max_len=16), tokens)
        graphed = _decode_pieces(StaticDecoder(model, batch_size=2, max_len=16), tokens)
    # the prompt's forward (padded to PREFILL_MULTIPLE) and S = 3, 1, 4
    assert setup_figures(model)["prepared_steps"] == 4, "not every step shape was captured"
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for a, b in zip(graphed, eager, strict=True):
        torch.testing.assert_close(a, b, **tol)


@CUDA
def test_compiled_captured_steps_equal_eager_steps_and_are_captured_once(tiny_args):
    """Compiled steps captured in CUDA graphs (under inference mode, as ``generate`` runs) give
    the eager decoder's logits in fp32; a second decoder of the same shape (a new prompt, outside
    inference mode) replays those graphs: nothing compiled or captured again."""
    from torch._dynamo.utils import counters

    model = LlamaMTP(tiny_args, attention="sdpa").to("cuda").eval()
    tokens, other = torch.randint(0, tiny_args.vocab_size, (2, 2, 14), device="cuda")
    with torch.inference_mode():
        eager = _decode_pieces(Decoder(model, batch_size=2, max_len=16), tokens)
        compiled = _decode_pieces(StaticDecoder(model, 2, 16, compiled=True), tokens)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    graphs, prepared = counters["stats"]["unique_graphs"], setup_figures(model)
    assert prepared["prepared_steps"] == 4  # the padded prompt and S = 3, 1, 4
    with torch.no_grad():
        again = _decode_pieces(StaticDecoder(model, 2, 16, compiled=True), other)
        eager_again = _decode_pieces(Decoder(model, 2, 16), other)
    for a, b in zip(again, eager_again, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs
    assert setup_figures(model) == prepared


@pytest.mark.parametrize("kept_heads", [[1], [1, 2]])
def test_loaded_rows_hold_the_prompt_in_every_layer_and_other_rows_keep_theirs(
    tiny_args, kept_heads
):
    """``load_rows`` (a row start in continuous batching): rows 0 and 2 of a 3-row decoder take
    a forwarded prompt's keys and values in every trunk and kept head layer, up to its length;
    row 1, and the positions past the prompt, keep what they held."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    prompt = torch.randint(0, tiny_args.vocab_size, (1, 5))
    prefix = StaticDecoder(model, 1, 5, kept_heads, cuda_graphs=False, prefix=True)
    slots = StaticDecoder(model, 3, 16, kept_heads, cuda_graphs=False)
    for cache in slots.caches():
        cache.k_BSKD.fill_(7.0)
        cache.v_BSKD.fill_(-7.0)
    with torch.no_grad():
        prefix.prefill(prompt)
        slots.load_rows(torch.tensor([2, 0]), prefix)
    assert len(slots.caches()) == len(model.layers) - 1 + len(kept_heads)
    for mine, theirs in zip(slots.caches(), prefix.caches(), strict=True):
        for tensor, source, held in (
            (mine.k_BSKD, theirs.k_BSKD, 7.0),
            (mine.v_BSKD, theirs.v_BSKD, -7.0),
        ):
            for row in (0, 2):
                assert torch.equal(tensor[row, :5], source[0, :5])
                assert (tensor[row, 5:] == held).all()
            assert (tensor[1] == held).all()


def test_compiled_batch_1_steps_equal_eager_steps(tiny_args):
    """A batch-1 decoder's compiled steps (single tokens, as batch-1 plain decoding runs, around
    a rewind) give the eager decoder's logits in fp32 (Inductor on the CPU: the GPU's path
    minus the graphs; chunks of several tokens: the fused test below)."""
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 14))
    with torch.no_grad():
        eager = _single_steps(Decoder(model, batch_size=1, max_len=16), tokens)
        static = StaticDecoder(model, 1, 16, cuda_graphs=False, compiled=True)
        compiled = _single_steps(static, tokens)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_projections_follow_the_weights_they_copy(tiny_args):
    """The fused copy is refreshed when a weight it copies changes in place (a training step
    between evaluations) or is replaced (a loaded checkpoint), and only then; the steps then
    decode with the new weights."""
    from wmtp.models.fused_projections import fused_projections

    torch.manual_seed(0)
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 8))
    fused = fused_projections(model, force=True)
    assert fused is not None and fused.refresh() == 0  # nothing changed since it was made
    block = model.layers[0]
    with torch.no_grad():
        block.attention.wk.weight.mul_(1.5)  # in place, as an optimizer step
        block.feed_forward.w3.weight = torch.nn.Parameter(block.feed_forward.w3.weight * 0.5)
    assert fused.refresh() == 1  # the one block whose weights changed
    copy = fused.of(block)
    kv = copy.kv_size
    torch.testing.assert_close(copy.wqkv[copy.q_size : copy.q_size + kv], block.attention.wk.weight)
    torch.testing.assert_close(copy.w13[copy.hidden :], block.feed_forward.w3.weight)
    with torch.no_grad():
        block.attention.wq.weight.add_(0.25)
        full = model(tokens)
    decoder = StaticDecoder(model, batch_size=1, max_len=8, cuda_graphs=False, fused=True)
    steps = [decoder.prefill(tokens[:, :5])] + [
        decoder.step(tokens[:, t : t + 1]) for t in (5, 6, 7)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # the heads' stacked layers (made by that decoder) follow their weights too
    assert decoder._stacked is not None and fused.refresh() == 0
    assert setup_figures(model)["stacked_head_layers"] == model.n_heads
    with torch.no_grad():
        model.head_layer(2).feed_forward.w2.weight.mul_(0.5)
        model.head_layer(2).ffn_norm.weight.add_(0.5)
        full = model(tokens)
    assert fused.refresh() == 1  # layer 2 of the stack, nothing else
    torch.testing.assert_close(decoder._stacked.w2[1], model.head_layer(2).feed_forward.w2.weight)
    decoder = StaticDecoder(model, batch_size=1, max_len=8, cuda_graphs=False, fused=True)
    steps = [decoder.prefill(tokens[:, :5])] + [
        decoder.step(tokens[:, t : t + 1]) for t in (5, 6, 7)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_only_plain_linear_blocks_are_fused_and_never_on_a_cpu_by_default(tiny_args):
    from wmtp.models.fused_projections import fusable, fused_projections, stackable
    from wmtp.models.lora import apply_lora

    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    assert fused_projections(model) is None  # a CPU model: no copy unless forced
    assert StaticDecoder(model, 1, 8, cuda_graphs=False).fused is False
    heads = tuple(model.head_layer(k) for k in range(1, model.n_heads + 1))
    assert stackable(heads) and not stackable(heads[:1])
    apply_lora(model, rank=2, alpha=4.0, targets=["wq", "w1"])
    assert not any(fusable(b) for b in model.layers)  # the adapters stay on their path
    assert not stackable(heads)
    assert fused_projections(model, force=True) is None


def test_compiled_fused_steps_equal_eager_steps(tiny_args):
    """The fused projections as Inductor compiles them (on the CPU here; on a GPU they are the
    default inside the captured graphs): the eager decoder's logits."""
    torch.manual_seed(0)
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14))
    with torch.no_grad():
        eager = _decode_pieces(Decoder(model, batch_size=2, max_len=16), tokens)
        decoder = StaticDecoder(model, 2, 16, cuda_graphs=False, compiled=True, fused=True)
        compiled = _decode_pieces(decoder, tokens)
    assert decoder.fused
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_compiled_step_writes_its_keys_into_the_caches_in_place(tiny_args):
    """A compiled step adds its rows' keys and values to the caches where they lie: it makes no
    cache-sized buffer (a functional write copied back whole: on the H200, four whole-cache
    copies per block, 3.3 ms of a 32-row step's ~6 at 2,048 positions). Read off the code
    Inductor generates for the step."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    decoder = StaticDecoder(model, 4, 300, kept_heads=[1], cuda_graphs=False, compiled=True)
    decoder.positions.copy_(torch.tensor([3, 50, 100, 7]))
    tokens = torch.randint(0, tiny_args.vocab_size, (4, 1))
    with torch.no_grad():
        _, code = run_and_get_code(decoder.step_rows, tokens, [1])
    cache = decoder.caches()[0].k_BSKD
    assert cache.shape[:2] == (4, 384)  # 300 positions in whole blocks
    generated = "\n".join(code)
    made = re.findall(r"empty_strided\w*\((\([\d, ]+\))", generated)  # the step's buffers
    assert made and str(tuple(cache.shape)) not in made, made
    assert "index_put" in generated


def test_attention_reading_only_each_rows_blocks_equals_the_masked_whole_cache():
    """``row_attention``: the block-skipping FlexAttention (what compiled GPU steps run; eager
    here) gives sdpa's output over the whole masked cache, for rows whose positions lie in
    different blocks, one of them at the cache's last position, and several new queries."""
    from wmtp.models.kv_cache import KV_BLOCK, row_attention

    torch.manual_seed(0)
    B, H, K, S, D, L = 4, 4, 2, 3, 16, 3 * KV_BLOCK
    keys_L = torch.arange(L)
    starts_B = torch.tensor([0, KV_BLOCK - 2, 2 * KV_BLOCK + 3, L - S])  # rows' first queries
    q = torch.randn(B, H, S, D)
    k, v = torch.randn(B, K, L, D), torch.randn(B, K, L, D)
    whole = row_attention(starts_B, S, keys_L, skip_blocks=False)(q, k, v)
    blocks = row_attention(starts_B, S, keys_L, skip_blocks=True)(q, k, v)
    torch.testing.assert_close(blocks, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("processors", [1, 78, 132, 170])
def test_flex_decoding_splits_give_every_multiprocessor_two_programs_and_no_more(processors):
    """``kv_splits``: rows x key heads x splits programs reach twice the multiprocessors, one
    split fewer would not; torch's own choice falls to one split once the rows' heads outnumber
    the multiprocessors (20 rows x 8 key heads on an H200's 132)."""
    from wmtp.models.kv_cache import kv_splits

    for row_heads in range(1, 4 * processors):
        splits = kv_splits(row_heads, processors)
        assert splits >= 1 and row_heads * splits >= 2 * processors
        assert splits == 1 or row_heads * (splits - 1) < 2 * processors
    assert kv_splits(20 * 8, 132) == 2 and 132 // (20 * 8) * 2 == 0


@CUDA
@pytest.mark.parametrize(
    ("B", "S", "blocks"), [(8, 1, 5), (8, 4, 5), (20, 1, 4), (32, 1, 16), (32, 4, 16)]
)
def test_compiled_block_skipping_attention_on_the_gpu_equals_the_masked_whole_cache(B, S, blocks):
    """Compiled (as the GPU steps run it), bf16, at decoding's head shapes: sdpa's output over
    the whole masked cache, also after the rows' positions move in place (the steps' buffer)."""
    from wmtp.models.kv_cache import KV_BLOCK, row_attention

    torch.manual_seed(0)
    H, K, D, L = 16, 8, 128, blocks * KV_BLOCK
    q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn(2, B, K, L, D, device="cuda", dtype=torch.bfloat16)
    keys_L = torch.arange(L, device="cuda")
    starts_B = torch.randint(0, L - S, (B,), device="cuda")

    @torch.compile(fullgraph=True, dynamic=False)
    def attend(q, k, v, starts_B, keys_L):
        return row_attention(starts_B, S, keys_L, skip_blocks=True)(q, k, v)

    with torch.no_grad():
        for _ in range(2):
            whole = row_attention(starts_B, S, keys_L, skip_blocks=False)(q, k, v)
            torch.testing.assert_close(attend(q, k, v, starts_B, keys_L), whole, atol=1e-2, rtol=0)
            starts_B.copy_(torch.randint(0, L - S, (B,), device="cuda"))


def test_a_step_whose_block_skipping_attention_cannot_compile_falls_back_to_sdpa(tiny_args, caplog):
    """Block-skipping attention, asked of compiled steps on the CPU (on a GPU it is the default):
    where this torch's Inductor cannot compile it (its CPU kernel refuses the 3-token step), the
    state falls back to sdpa for good and says so; either way the logits are the eager ones."""
    torch.manual_seed(0)
    model = LlamaMTP(tiny_args, attention="sdpa").eval()
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 14))
    with torch.no_grad():
        eager = _decode_pieces(Decoder(model, batch_size=2, max_len=16), tokens)
        decoder = StaticDecoder(model, 2, 16, cuda_graphs=False, compiled=True)
        decoder._state.skip_blocks = True
        with caplog.at_level("WARNING", logger="wmtp.models.kv_cache"):
            compiled = _decode_pieces(decoder, tokens)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    fell_back = "cannot compile block-skipping attention" in caplog.text
    assert fell_back == (not decoder._state.skip_blocks), caplog.text
