"""Batched generation: greedy against a step-by-step reference, sampling, stops, token limits."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.eval.tests_eval_helpers import letters, make_tiny_model
from tests.gpu import needs_cuda
from wmtp.eval.generate import (
    Row,
    Sampling,
    StepTally,
    StopRule,
    decode_rows,
    generate,
    sample_next,
)
from wmtp.models.kv_cache import setup_figures

PROMPTS = [[1, 2, 3], [5, 9, 11, 12, 30, 4], [7], [8, 8, 2], [40, 1, 33]]
"""Prompts of several lengths: the rows of one batch sit at different positions."""


def reference_greedy(model, prompt, steps):
    """Greedy decoding by the plain forward, one row at a time, no batching, no cache."""
    tokens, device = list(prompt), next(model.parameters()).device
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([tokens], device=device))[0, -1, 0]  # last, head 1
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batched_greedy_equals_one_row_reference(batch_size):
    model = make_tiny_model()
    outs = generate(model, PROMPTS, StopRule(letters), max_new_tokens=20, batch_size=batch_size)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.tokens == reference_greedy(model, prompt, 20)
        assert out.finish_reason == "length"
        assert out.text == letters(out.tokens)


def test_per_sample_limits_eos_and_stop_strings():
    model = make_tiny_model()
    full = [reference_greedy(model, p, 12) for p in PROMPTS]
    limits = [3, 7, 0, 12, 1]  # rows 0, 3, 4 share a batch but not a limit
    outs = generate(model, PROMPTS, StopRule(letters), max_new_tokens=limits)
    assert [o.tokens for o in outs] == [f[:n] for f, n in zip(full, limits, strict=True)]

    # A stop string in the middle of row 0: the completion ends just before it.
    text0 = letters(full[0])
    stop = text0[4:6]
    cut = text0.find(stop)
    outs = generate(model, PROMPTS[:1], StopRule(letters, stop=[stop]), max_new_tokens=12)
    assert outs[0].finish_reason == "stop"
    assert outs[0].text == text0[:cut] and outs[0].tokens == full[0][:cut]

    # The end-of-sequence token ends a row and is not part of the completion.
    eos = full[1][3]
    first = full[1].index(eos)
    outs = generate(model, PROMPTS[1:2], StopRule(letters, eos_id=eos), max_new_tokens=12)
    assert outs[0].finish_reason == "eos" and outs[0].tokens == full[1][:first]


def test_context_length_caps_the_completion():
    model = make_tiny_model()
    outs = generate(model, PROMPTS, StopRule(letters), max_new_tokens=50, max_length=8)
    assert [len(o.tokens) for o in outs] == [5, 2, 7, 5, 5]


def test_top_p_keeps_the_nucleus_with_renormalised_probabilities():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(40_000, 1)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(
        logits, Sampling(temperature=1.0, top_p=0.7), torch.rand(40_000, generator=gen)
    )
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    # nucleus {0, 1} (0.5 < 0.7 <= 0.8): probabilities 0.625, 0.375
    assert freq[2:].sum() == 0
    assert freq[0].item() == pytest.approx(0.625, abs=0.01)
    # temperature 0.5 squares the odds: 0.25, 0.09, 0.0225, 0.0025 over their sum
    draws = sample_next(
        logits, Sampling(temperature=0.5, top_p=1.0), torch.rand(40_000, generator=gen)
    )
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    expected = torch.tensor([0.25, 0.09, 0.0225, 0.0025])
    assert torch.allclose(freq, expected / expected.sum(), atol=0.01)
    assert sample_next(logits[:3], Sampling(temperature=0.0)).tolist() == [0, 0, 0]


def test_a_draw_inverts_the_nucleus_distribution_at_its_uniform():
    """Uniforms spread evenly over [0, 1) land on each token in proportion to its probability
    in ``next_token_probs`` (the distribution in vocabulary order, written independently), to
    within one uniform's step; temperatures and nuclei of several sizes, rows of their own.
    bf16 logits (a decoding step's), many of them tied, as well as fp32: the nucleus is sorted
    by the logits, ``next_token_probs`` sorts the fp32 probabilities."""
    from wmtp.eval.generate import next_token_probs

    torch.manual_seed(0)
    logits_V = torch.randn(200) * 3
    n = 20_000
    uniforms_N = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    samplings = [Sampling(0.7, 0.8), Sampling(1.0, 0.3), Sampling(0.2, 0.95), Sampling(1.5)]
    assert len(logits_V.bfloat16().unique()) < 200  # ties among the bf16 logits
    for dtype, sampling in itertools.product([torch.float32, torch.bfloat16], samplings):
        draws_N = sample_next(logits_V.to(dtype).expand(n, -1), sampling, uniforms_N)
        freq_V = torch.bincount(draws_N, minlength=200).double() / n
        expected_V = next_token_probs(logits_V.to(dtype), sampling).double()
        assert (freq_V[expected_V == 0] == 0).all()
        torch.testing.assert_close(freq_V, expected_V, atol=2.0 / n, rtol=0)


@pytest.mark.parametrize("shape", [(5,), (3, 128), (2, 3, 300), (4, 0, 257), (0,)])
def test_running_sum_is_the_cumulative_sum(shape):
    """The running sum sampling inverts (triangular products, block by block) equals torch's
    cumulative sum: lengths under, at and past a block, leading dimensions, empty ones; in
    fp64 to rounding, in fp32 to fp32's."""
    from wmtp.eval.generate import running_sum

    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(running_sum(x), x.cumsum(-1))
    torch.testing.assert_close(running_sum(x.float()), x.cumsum(-1).float())


@needs_cuda("compiled GPU steps need a GPU")
def test_gpu_steps_of_20_sampled_rows_over_32k_tokens_choose_them_inside_the_step(caplog):
    """The peers' and an evaluation's batch: 20 rows sampled over Llama-2's 32k-token
    vocabulary, with and without a nucleus, plain and self-speculative. Every step's choice
    of tokens compiles into the step: torch 2.11's split scan of 20 long rows failed to
    compile there, and the choice ran eagerly after the step (2026-12-04)."""
    import dataclasses

    from tests.eval.tests_eval_helpers import tiny_args
    from wmtp.eval.speculative import speculative_generate_batch
    from wmtp.models.kv_cache import KV_BLOCK
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    args = dataclasses.replace(tiny_args(vocab_size=32000), dim=64, max_seq_len=2 * KV_BLOCK)
    model = LlamaMTP(args, "sdpa")
    model.reset_parameters(std=0.3)
    model = model.eval().cuda()
    prompt = torch.randint(3, 32000, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    rule = StopRule(letters)
    for sampling in (Sampling(0.2, 0.95), Sampling(0.2)):
        with caplog.at_level("WARNING", logger="wmtp.models.kv_cache"):
            rows = [Row(prompt, rule, 8, seed=s) for s in range(20)]
            plain = decode_rows(model, rows, slots=20, sampling=sampling)
            speculative_generate_batch(
                model, [prompt] * 20, rule, max_new_tokens=8, sampling=sampling,
                generator=torch.Generator(device="cuda").manual_seed(0),
            )  # fmt: skip
        assert "cannot compile" not in caplog.text, sampling
        assert all(len(p.tokens) == 8 for p in plain)


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = make_tiny_model()
    sampling = Sampling(temperature=1.0, top_p=0.9)
    runs = [
        generate(
            model,
            PROMPTS,
            StopRule(letters),
            max_new_tokens=10,
            sampling=sampling,
            generator=torch.Generator().manual_seed(3),
        )
        for _ in range(2)
    ]
    assert [o.tokens for o in runs[0]] == [o.tokens for o in runs[1]]
    greedy = generate(model, PROMPTS, StopRule(letters), max_new_tokens=10)
    assert [o.tokens for o in runs[0]] != [o.tokens for o in greedy]


def test_next_token_view_shares_weights_and_drops_extra_heads():
    from wmtp.eval.generate import next_token_view

    model = make_tiny_model(3)
    view = next_token_view(model)
    assert view.n_heads == 1 and len(view.extra_heads) == 0 and len(model.extra_heads) == 2
    assert len(view.blocks()) == len(model.blocks()) - 2
    assert view.output.weight is model.output.weight
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(view(tokens)[:, :, 0], model(tokens)[:, :, 0])


def test_a_batch_takes_one_step_per_token_after_the_first():
    """The next step is queued before the host reads a step's tokens, but never past the row
    limits: prefill + (limit - 1) steps, as reading first would take; a row ending early (EOS)
    costs one step the loop did not need."""
    model = make_tiny_model()
    forwards = []
    model.layers[-1].attention.wq.register_forward_pre_hook(lambda *_: forwards.append(1))
    generate(model, [[1, 2, 3]] * 2, StopRule(letters), max_new_tokens=[5, 3])
    assert len(forwards) == 1 + 4
    full = reference_greedy(model, [1, 2, 3], 6)
    eos = full[1]
    forwards.clear()
    out = generate(model, [[1, 2, 3]], StopRule(letters, eos_id=eos), max_new_tokens=6)[0]
    assert out.finish_reason == "eos" and out.tokens == full[: full.index(eos)]
    assert len(forwards) == 1 + full.index(eos) + 1


def test_compiled_steps_decode_the_eager_tokens_and_compile_once():
    """Compiled fixed-shape steps (Inductor on the CPU, no CUDA graphs) give the eager
    decoder's greedy tokens in fp32; a second call, other prompts of the same shape, compiles
    and prepares nothing new (Dynamo's own count of the graphs it compiled)."""
    from torch._dynamo.utils import counters

    model = make_tiny_model()
    prompts = [[1, 2, 3], [8, 8, 2], [40, 1, 33]]  # one batch of 3 rows
    eager = generate(model, prompts, StopRule(letters), max_new_tokens=12)
    before = setup_figures(model)
    compiled = generate(model, prompts, StopRule(letters), max_new_tokens=12, compiled=True)
    assert [c.tokens for c in compiled] == [e.tokens for e in eager]
    assert [c.tokens for c in compiled] == [reference_greedy(model, p, 12) for p in prompts]
    graphs, prepared = counters["stats"]["unique_graphs"], setup_figures(model)
    assert prepared["prepared_steps"] == before["prepared_steps"] + 1
    assert prepared["setup_s"] > before["setup_s"]
    others = [[5, 9, 11], [7, 7, 7], [2, 30, 4]]
    again = generate(model, others, StopRule(letters), max_new_tokens=12, compiled=True)
    assert counters["stats"]["unique_graphs"] == graphs
    assert setup_figures(model) == prepared
    assert [a.tokens for a in again] == [reference_greedy(model, p, 12) for p in others]


def test_a_free_slot_takes_the_next_row_while_a_long_row_decodes():
    """Continuous batching: with two slots, four 2-token rows pass through one slot while a
    10-token row holds the other, so the batch takes the long row's 9 steps (plus one prompt
    forward per distinct prompt), and each short row is reported as soon as it ends."""
    model = make_tiny_model()
    forwards, heard = [], []
    model.layers[-1].attention.wq.register_forward_pre_hook(lambda *_: forwards.append(1))
    rows = [Row(p, StopRule(letters), n) for p, n in zip(PROMPTS, [10, 2, 2, 2, 2], strict=True)]
    outs = decode_rows(model, rows, slots=2, on_done=lambda i, _: heard.append(i))
    assert len(forwards) == len(PROMPTS) + 9
    assert heard == [1, 2, 3, 4, 0]
    assert [o.tokens for o in outs] == [reference_greedy(model, r.prompt, r.limit) for r in rows]


def test_a_sampled_rows_tokens_depend_only_on_its_seed():
    """A row draws from its own seeded uniforms: the same row gives the same tokens whatever
    decodes beside it and however many slots there are; other seeds give other tokens."""
    model = make_tiny_model()
    sampling = Sampling(temperature=1.0, top_p=0.95)
    rule = StopRule(letters)
    mine = Row(PROMPTS[1], rule, 15, seed=7)
    others = [Row(p, rule, 9, seed=s) for s, p in enumerate(PROMPTS)]
    alone = decode_rows(model, [mine], slots=1, sampling=sampling)[0]
    for slots in (2, 4):
        crowd = decode_rows(model, [*others[:3], mine, *others[3:]], slots=slots, sampling=sampling)
        assert crowd[3].tokens == alone.tokens
    reseeded = [Row(PROMPTS[1], rule, 15, seed=s) for s in range(8, 12)]
    assert any(
        o.tokens != alone.tokens for o in decode_rows(model, reseeded, slots=2, sampling=sampling)
    )


def _rows_of_few_prompts() -> list[Row]:
    """Rows as an evaluation makes them: several samples of each prompt, limits apart."""
    rule = StopRule(letters)
    return [
        *(Row(PROMPTS[0], rule, 6 + s, seed=s) for s in range(4)),
        Row(PROMPTS[2], rule, 5, seed=11),
        *(Row(PROMPTS[1], rule, 3 + 2 * s, seed=20 + s) for s in range(5)),
    ]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_of_one_prompt_starting_together_decode_as_each_row_alone(temperature):
    """An evaluation's ``n_samples`` rows of one prompt take free slots together (one copy of
    the prompt's keys into all of them, their first tokens drawn at once), between rows of
    other prompts, and again when slots free up: every row decodes the tokens it decodes
    alone, with its own seed and limit."""
    model = make_tiny_model()
    sampling = Sampling(temperature=temperature, top_p=0.9)
    rows = _rows_of_few_prompts()
    alone = [decode_rows(model, [row], slots=1, sampling=sampling)[0].tokens for row in rows]
    for slots in (3, 6, len(rows)):
        together = decode_rows(model, rows, slots=slots, sampling=sampling)
        assert [o.tokens for o in together] == alone, slots
    assert len({tuple(t) for t in alone[:4]}) > 1 or sampling.greedy  # seeds differ


@needs_cuda("CUDA graphs need a GPU")
def test_cuda_graph_rows_starting_together_decode_the_eager_tokens():
    """On a GPU: rows of one prompt started together (written into the slots the captured
    steps read) decode, greedy and sampled, the tokens of the same steps run uncaptured at the
    same batch (the CPU test holds those to each row decoded alone)."""
    model = make_tiny_model().cuda()
    rows = _rows_of_few_prompts()
    for sampling in (Sampling(), Sampling(temperature=1.0, top_p=0.9)):
        for slots in (3, len(rows)):
            eager = decode_rows(model, rows, slots=slots, sampling=sampling, cuda_graphs=False)
            graphed = decode_rows(model, rows, slots=slots, sampling=sampling, compiled=False)
            assert [g.tokens for g in graphed] == [e.tokens for e in eager], (sampling, slots)


def test_rows_of_no_tokens_end_at_once():
    model = make_tiny_model()
    rows = [Row([1, 2], StopRule(letters), 0), Row([3], StopRule(letters), 4)]
    outs = decode_rows(model, rows, slots=1)
    assert outs[0].tokens == [] and outs[0].finish_reason == "length"
    assert outs[1].tokens == reference_greedy(model, [3], 4)
    assert decode_rows(model, rows[:1], slots=1)[0].finish_reason == "length"


@pytest.mark.parametrize("seed", range(3))
def test_peeking_at_the_last_tokens_ends_rows_where_decoding_everything_does(seed):
    """``StopRule.peek`` looks for stop strings in the last tokens' text only: on byte tokens
    of ASCII and multi-byte characters it ends every row where and as decoding the whole
    completion at every token does."""
    from wmtp.data.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    prompt = tok.encode("def f(x):\n    ", bos=True)
    from wmtp.eval.completions import continuation_decoder

    decode = continuation_decoder(tok, prompt)
    stops = ("\ndef", "\n#", "ré\n", "😀x")
    pieces = ["a", "b", " ", "\n", "def", "#", "ré", "😀", "x", "é"]
    rng = torch.Generator().manual_seed(seed)
    for _ in range(200):
        picks = torch.randint(len(pieces), (12,), generator=rng).tolist()
        tokens = list("".join(pieces[i] for i in picks).encode("utf-8"))
        slow = StopRule(decode, stop=stops)
        fast = StopRule(decode, stop=stops, peek=tok.decode)
        for n in range(1, len(tokens) + 1):
            expected = slow.finished(tokens[:n], len(tokens))
            assert fast.finished(tokens[:n], len(tokens)) == expected
            if expected is not None:
                break


def test_the_step_tally_counts_what_the_slots_did():
    """Rows of 20, 3, 9, 14 and 5 tokens through 2 slots: every token a busy slot-step, every
    row started once; the longest row alone keeps the decoder going at the end."""
    model = make_tiny_model()
    limits = [20, 3, 9, 14, 5]
    rows = [Row(p, StopRule(letters), n) for p, n in zip(PROMPTS, limits, strict=True)]
    tally = StepTally()
    decoded = decode_rows(model, rows, slots=2, tally=tally)
    assert [len(d.tokens) for d in decoded] == limits
    assert (tally.slots, tally.rows_started, tally.busy_slot_steps) == (2, 5, sum(limits))
    assert max(limits) <= tally.steps < sum(limits)  # two rows at a time, none idle long
    figures = tally.as_dict()
    assert figures["slot_occupancy"] == round(sum(limits) / (2 * tally.steps), 4)
    assert 0 < figures["starting_rows_s"] < figures["seconds"]
    changes = sum(a.prompt != b.prompt for a, b in itertools.pairwise(rows))
    assert figures["prompts_forwarded"] == 1 + changes  # a prompt once for the rows after it
    assert 0 < figures["prompt_forward_s"] <= figures["starting_rows_s"]


@needs_cuda("CUDA graphs need a GPU")
def test_cuda_graph_rows_refilled_decode_the_eager_tokens():
    """On a GPU: rows handed from slot to slot, decoded from CUDA graphs of the eager step, give
    the tokens of the same step run uncaptured, greedy (the plain forward's too) and sampled."""
    model = make_tiny_model().cuda()
    rule = StopRule(letters)
    limits = [20, 3, 9, 14, 5]
    rows = [Row(p, rule, n, seed=i) for i, (p, n) in enumerate(zip(PROMPTS, limits, strict=True))]
    for sampling in (Sampling(), Sampling(temperature=1.0, top_p=0.9)):
        eager = decode_rows(model, rows, slots=2, sampling=sampling, cuda_graphs=False)
        graphed = decode_rows(model, rows, slots=2, sampling=sampling, compiled=False)
        assert [g.tokens for g in graphed] == [e.tokens for e in eager]
    greedy = decode_rows(model, rows, slots=2, compiled=False)
    assert [g.tokens for g in greedy] == [reference_greedy(model, r.prompt, r.limit) for r in rows]


@needs_cuda("CUDA graphs need a GPU")
def test_gpu_rows_start_and_end_without_waiting_for_the_steps_queued_before():
    """On a GPU, its steps captured: rows started in free slots (a prompt's keys and values,
    positions, random numbers, first tokens) and rows ended queue their work behind the steps
    already queued; nothing makes the host wait for the device but the one token read a step
    (an event). A wait per start drained the queue an evaluation keeps a step ahead."""
    from tests.eval.tests_eval_helpers import synchronising_calls

    model = make_tiny_model().cuda()
    rows = _rows_of_few_prompts()
    sampling = Sampling(temperature=1.0, top_p=0.9)
    decode_rows(model, rows, slots=3, sampling=sampling, compiled=False)  # captures the steps
    again = synchronising_calls(
        lambda: decode_rows(model, rows, slots=3, sampling=sampling, compiled=False)
    )
    assert again == []


@needs_cuda("compiled GPU steps need a GPU")
def test_gpu_default_steps_over_prompts_spanning_cache_blocks_decode_the_plain_tokens(caplog):
    """What ``wmtp eval`` runs on a GPU: compiled, captured steps whose attention reads only
    each row's filled cache blocks, rows of prompts spanning several blocks handed from slot to
    slot. Greedy, fp32: the plain forward's tokens, with no fallback to whole-cache attention."""
    import dataclasses

    from tests.eval.tests_eval_helpers import tiny_args
    from wmtp.models.kv_cache import KV_BLOCK
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)  # head_dim 16: the smallest FlexAttention's GPU kernels take
    model = LlamaMTP(dataclasses.replace(tiny_args(), dim=64, max_seq_len=4 * KV_BLOCK), "sdpa")
    model.reset_parameters(std=0.3)
    model = model.eval().cuda()
    draw = torch.Generator().manual_seed(1)
    lengths = [2 * KV_BLOCK + 40, 20, KV_BLOCK + 9, 2 * KV_BLOCK - 1, 5]
    prompts = [torch.randint(48, (n,), generator=draw).tolist() for n in lengths]
    rows = [Row(p, StopRule(letters), 12) for p in prompts]
    with caplog.at_level("WARNING", logger="wmtp.models.kv_cache"):
        decoded = decode_rows(model, rows, slots=2)
    assert "cannot compile" not in caplog.text
    assert [d.tokens for d in decoded] == [reference_greedy(model, p, 12) for p in prompts]
