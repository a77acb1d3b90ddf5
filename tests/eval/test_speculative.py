"""Self-speculative decoding: exactly greedy, with acceptance statistics checked independently;
sampled, exactly head 1's distribution (a chi-square test against the enumerated one); batched,
every row as it would be alone."""

from __future__ import annotations

import pytest
import torch

from tests.eval.tests_eval_helpers import letters, make_tiny_model, tiny_args
from tests.gpu import needs_cuda
from wmtp.eval.generate import StopRule, generate
from wmtp.eval.speculative import SpeculativeStats, speculative_generate, speculative_generate_batch
from wmtp.models.llama_mtp import LlamaMTP

pytestmark = pytest.mark.minutes(1.2)

PROMPTS = [[1, 2, 3], [5, 9, 11, 12, 30, 4], [7], [40, 41, 42, 43]]
SAME_LENGTH = [[40, 41, 42, 43], [1, 2, 3, 4], [40, 41, 42, 43], [7, 7, 7, 7], [5, 9, 11, 12]]
"""Prompts of one length, one of them twice: a batch of rows that advance apart."""


def reference_counts(model, prompt, completion, limit, by_head=None):
    """Forwards, drafted and accepted tokens, recounted from ONE full forward of the result.

    Heads 2..n at committed position p guess tokens p+2..p+n; head 1's greedy choices are the
    completion itself, so a guess is accepted while it equals the completion there. ``by_head``
    (a dict) receives head -> [drafted, accepted].
    """
    seq = prompt + completion
    with torch.no_grad():
        device = next(model.parameters()).device
        preds_Sn = model(torch.tensor([seq], device=device))[0].argmax(-1).tolist()
    n = model.n_heads
    forwards = drafted = accepted = 0
    generated, p = 0, len(prompt) - 1
    while True:
        generated += 1  # head 1's token at p + 1
        if generated >= limit:
            break
        guesses = preds_Sn[p][1 : 1 + min(n - 1, limit - generated)]
        a = 0
        while a < len(guesses) and guesses[a] == seq[p + 2 + a]:
            a += 1
        for j in range(len(guesses)):
            counts = (by_head if by_head is not None else {}).setdefault(j + 2, [0, 0])
            counts[0], counts[1] = counts[0] + 1, counts[1] + (j < a)
        forwards, drafted, accepted, generated = (
            forwards + 1,
            drafted + len(guesses),
            accepted + a,
            generated + a,
        )
        if generated >= limit:
            break
        p += 1 + a
    return forwards, drafted, accepted


def agreeing_model(n_future_tokens=4):
    """Heads that mostly agree with head 1's future: every block is the identity (wo = w2 = 0)
    and the unembedding is the embedding, so each token predicts itself at every depth and greedy
    decoding repeats the last prompt token."""
    model = make_tiny_model(n_future_tokens)
    with torch.no_grad():
        for block in model.blocks():
            block.attention.wo.weight.zero_()
            block.feed_forward.w2.weight.zero_()
        model.output.weight.copy_(model.tok_embeddings.weight)
    return model


@pytest.mark.parametrize("n_future_tokens", [1, 2, 4])
def test_speculative_equals_greedy_on_a_random_model(n_future_tokens):
    model = make_tiny_model(n_future_tokens, seed=n_future_tokens)
    limit = 24
    greedy = generate(model, PROMPTS, StopRule(letters), max_new_tokens=limit)
    for prompt, plain in zip(PROMPTS, greedy, strict=True):
        out, stats = speculative_generate(model, prompt, StopRule(letters), max_new_tokens=limit)
        assert out.tokens == plain.tokens and out.finish_reason == "length"
        assert stats.generated == limit
        by_head = {}
        assert (stats.forwards, stats.drafted, stats.accepted) == reference_counts(
            model, prompt, out.tokens, limit, by_head
        )
        assert stats.acceptance_by_head() == {k: a / d for k, (d, a) in by_head.items() if d}
        assert set(by_head) == set(range(2, n_future_tokens + 1))
        assert 0 <= stats.acceptance_rate <= 1
        assert 1 <= stats.tokens_per_forward <= n_future_tokens
        # one sure token per forward (the last forward's may fall beyond the limit)
        assert (
            stats.forwards + stats.accepted
            <= stats.generated
            <= stats.forwards + 1 + stats.accepted
        )


def test_agreeing_heads_accept_every_draft():
    model = agreeing_model(4)
    prompt = [3, 17, 9]
    plain = generate(model, [prompt], StopRule(letters), max_new_tokens=21)[0]
    assert plain.tokens == [9] * 21  # the construction works: greedy repeats the last token
    out, stats = speculative_generate(model, prompt, StopRule(letters), max_new_tokens=21)
    assert out.tokens == plain.tokens
    assert stats.acceptance_rate == 1.0
    assert stats.acceptance_by_head() == {2: 1.0, 3: 1.0, 4: 1.0}
    # 1 token from the prompt's forward, then 1 + 3 per verify forward: 21 = 1 + 5 * 4
    assert stats.prompt_forwards == 1 and stats.forwards == 5
    assert stats.tokens_per_forward == 4.0  # per verify forward: as many as the heads


def test_partly_agreeing_heads_and_stops():
    """Half of the heads copy head 1 of a random model: some drafts accepted, some not."""
    model = partly_agreeing_model()
    total = [0, 0]
    for prompt in PROMPTS:
        plain = generate(model, [prompt], StopRule(letters), max_new_tokens=30)[0]
        stop = letters(plain.tokens)[20:22]
        rule = StopRule(letters, stop=[stop])
        expected = generate(model, [prompt], rule, max_new_tokens=30)[0]
        out, stats = speculative_generate(model, prompt, rule, max_new_tokens=30)
        assert (out.tokens, out.text, out.finish_reason) == (
            expected.tokens,
            expected.text,
            expected.finish_reason,
        )
        total[0] += stats.accepted
        total[1] += stats.drafted
        by_head = stats.acceptance_by_head()
        assert by_head[2] >= by_head[3]  # head 3's draft stands only on head 2's
    assert 0 < total[0] < total[1]


@pytest.mark.parametrize("fused", [None, True])
def test_compiled_verify_steps_stay_exactly_greedy(fused):
    """Speculative decoding with compiled fixed-shape verify steps (Inductor on the CPU) gives
    plain greedy's tokens in fp32, with the recounted statistics; ``fused``: with the fused
    projections and the heads' layers as one batched block, as a GPU runs them."""
    model = make_tiny_model(3, seed=2)
    limit = 12
    greedy = generate(model, PROMPTS, StopRule(letters), max_new_tokens=limit)
    steps = {"compiled": True, "fused": fused}
    for prompt, plain in zip(PROMPTS, greedy, strict=True):
        rule = StopRule(letters)
        out, stats = speculative_generate(model, prompt, rule, max_new_tokens=limit, **steps)
        assert out.tokens == plain.tokens
        assert (stats.forwards, stats.drafted, stats.accepted) == reference_counts(
            model, prompt, out.tokens, limit
        )
    assert_rows_exactly_greedy(model, SAME_LENGTH, limit, StopRule(letters), **steps)


def partly_agreeing_model(seed=11):
    """Head 2 copies head 1 of a random model (head 3 does not): some drafts accepted, some
    not, so the rows of a batch advance by different numbers of tokens."""
    model = make_tiny_model(3, seed=seed)
    with torch.no_grad():
        model.extra_heads[0].load_state_dict(model.layers[-1].state_dict())
    return model


def assert_rows_exactly_greedy(model, prompts, limit, rule, **steps):
    """Batched speculative decoding of ``prompts`` gives every row plain greedy's completion,
    with the acceptance counts recounted for that row alone; the rows' acceptance per head."""
    outs, stats = speculative_generate_batch(model, prompts, rule, max_new_tokens=limit, **steps)
    for prompt, out, row in zip(prompts, outs, stats, strict=True):
        plain = generate(model, [prompt], rule, max_new_tokens=limit)[0]
        assert (out.tokens, out.text, out.finish_reason) == (
            plain.tokens, plain.text, plain.finish_reason,
        )  # fmt: skip
        if out.finish_reason == "length":  # recounted up to the limit (a stop string cuts it)
            by_head = {}
            counted = reference_counts(model, prompt, out.tokens, limit, by_head)
            assert (row.forwards, row.drafted, row.accepted) == counted
            assert row.acceptance_by_head() == {k: a / d for k, (d, a) in by_head.items() if d}
        assert row.generated >= len(out.tokens) and row.prompt_forwards == 1
    return outs, stats


@pytest.mark.parametrize("n_future_tokens", [1, 2, 4])
def test_batched_speculative_gives_every_row_greedys_tokens(n_future_tokens):
    """Rows of different prompts (one of them twice) in one batch: each row's tokens and
    acceptance counts are those of the row decoded alone."""
    model = make_tiny_model(n_future_tokens, seed=n_future_tokens)
    assert_rows_exactly_greedy(model, SAME_LENGTH, 24, StopRule(letters))


def test_batched_rows_advance_apart_and_stop_apart():
    """Partly agreeing heads: the rows accept different numbers of drafts, and stop strings
    end some rows early while the others go on."""
    model = partly_agreeing_model()
    plain = generate(model, SAME_LENGTH[:1], StopRule(letters), max_new_tokens=30)[0]
    rule = StopRule(letters, stop=[letters(plain.tokens)[12:14]])
    outs, stats = assert_rows_exactly_greedy(model, SAME_LENGTH, 30, rule)
    assert {out.finish_reason for out in outs} == {"stop", "length"}
    assert len({(row.forwards, row.accepted) for row in stats}) > 2  # rows went apart
    total = SpeculativeStats.of_batch(stats)
    assert total.prompt_forwards == len(SAME_LENGTH) and total.seconds == stats[0].seconds
    assert total.accepted == sum(row.accepted for row in stats) and 0 < total.acceptance_rate < 1


@needs_cuda("CUDA graphs need a GPU")
def test_gpu_batched_rows_end_apart_without_waiting_for_the_device():
    """On a GPU, the verify steps captured: the prompts reach the device and rows that end
    while others go on (stop strings) leave the batch with no wait for the device but the first
    drafts' read and each verification's one read (an event, not a synchronisation)."""
    from tests.eval.tests_eval_helpers import synchronising_calls

    model = partly_agreeing_model().cuda()
    plain = generate(model, SAME_LENGTH[:1], StopRule(letters), max_new_tokens=30)[0]
    rule = StopRule(letters, stop=[letters(plain.tokens)[12:14]])

    def decode():
        return speculative_generate_batch(model, SAME_LENGTH, rule, max_new_tokens=30)

    outs, _ = decode()  # captures the steps
    assert {out.finish_reason for out in outs} == {"stop", "length"}
    syncs = synchronising_calls(decode)
    assert len(syncs) == 1 and "speculative.py" in syncs[0], syncs  # first_drafts' read


@needs_cuda("CUDA graphs need a GPU")
@pytest.mark.parametrize("n_future_tokens", [2, 4])
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_graph_decoding_equals_eager_decoding(n_future_tokens, compiled):
    """On a GPU: plain and speculative decoding from CUDA graphs (of eager or compiled steps)
    give the eager decoder's tokens, and speculative decoding stays exactly greedy."""
    model = make_tiny_model(n_future_tokens, seed=n_future_tokens).cuda()
    limit = 24
    steps = {"cuda_graphs": True, "compiled": compiled}
    eager = generate(model, PROMPTS, StopRule(letters), max_new_tokens=limit, cuda_graphs=False)
    graphed = generate(model, PROMPTS, StopRule(letters), max_new_tokens=limit, **steps)
    assert [g.tokens for g in graphed] == [e.tokens for e in eager]
    for prompt, plain in zip(PROMPTS, eager, strict=True):
        out, stats = speculative_generate(
            model, prompt, StopRule(letters), max_new_tokens=limit, **steps
        )
        assert out.tokens == plain.tokens
        assert (stats.forwards, stats.drafted, stats.accepted) == reference_counts(
            model, prompt, out.tokens, limit
        )
    assert_rows_exactly_greedy(model, SAME_LENGTH, limit, StopRule(letters), **steps)


@needs_cuda("CUDA graphs need a GPU")
def test_captured_sampling_steps_draw_the_eager_steps_tokens_on_the_gpu():
    """On a GPU (fp32): speculative sampling whose verification is compiled into the captured
    verify step, and plain sampling whose draw is, give from one seed the tokens that eager steps
    with the eager verification and draw give, with the same acceptance."""
    from wmtp.eval.generate import Sampling

    model = make_tiny_model(4, seed=4).cuda()
    sampling = Sampling(temperature=1.0, top_p=0.9)
    options = {"max_new_tokens": 24, "sampling": sampling}

    def speculative(**steps):
        generator = torch.Generator(device="cuda").manual_seed(11)
        outs, stats = speculative_generate_batch(
            model, SAME_LENGTH, StopRule(letters), generator=generator, **options, **steps
        )
        return [out.tokens for out in outs], SpeculativeStats.of_batch(stats).accepted

    def plain(**steps):
        generator = torch.Generator(device="cuda").manual_seed(3)
        outs = generate(model, PROMPTS, StopRule(letters), generator=generator, **options, **steps)
        return [out.tokens for out in outs]

    eager = {"cuda_graphs": False, "compiled": False}
    captured = {"cuda_graphs": True, "compiled": True}
    (tokens, accepted), (reference, reference_accepted) = (
        speculative(**captured),
        speculative(**eager),
    )
    assert tokens == reference and accepted == reference_accepted > 0
    assert plain(**captured) == plain(**eager)


# --- speculative sampling: head 1's distribution exactly --------------------------------------

SAMPLED = 3
"""Tokens per sampled continuation: the test compares distributions over all V**3 of them."""


def continuation_probs(model, prompt, sampling, vocab):
    """The exact probability of every ``SAMPLED``-token continuation under plain sampling from
    head 1 (one forward of them all): ``{tuple: p}``."""
    import itertools

    from wmtp.eval.generate import next_token_probs

    tails = list(itertools.product(range(vocab), repeat=SAMPLED))
    rows = torch.tensor([prompt + list(t) for t in tails])
    with torch.no_grad():
        head1_BSV = model(rows)[:, len(prompt) - 1 : len(prompt) - 1 + SAMPLED, 0]
    probs_BSV = next_token_probs(head1_BSV, sampling).double()
    index_BS1 = torch.tensor(tails)[..., None]
    return dict(zip(tails, probs_BSV.gather(-1, index_BS1)[..., 0].prod(-1).tolist(), strict=True))


def chi_square_p_value(counts: dict, probs: dict) -> float:
    """Pearson's goodness of fit of ``counts`` to ``probs``, cells expecting under 5 pooled."""
    total = sum(counts.values())
    observed, expected, pooled = [], [], [0.0, 0.0]
    for cell, p in probs.items():
        if p * total < 5:
            pooled[0] += counts.get(cell, 0)
            pooled[1] += p * total
        else:
            observed.append(counts.get(cell, 0))
            expected.append(p * total)
    if pooled[1] > 0:
        observed.append(pooled[0])
        expected.append(pooled[1])
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    dof = torch.tensor((len(observed) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))


def sampling_model(vocab):
    torch.manual_seed(5)
    model = LlamaMTP(tiny_args(3, vocab_size=vocab), attention="eager")
    model.reset_parameters(std=0.3)
    return model.eval()


@pytest.mark.parametrize(("temperature", "top_p", "rows"), [(1.5, 1.0, 300), (1.0, 0.8, 100)])
def test_speculative_sampling_keeps_head_1s_distribution(temperature, top_p, rows):
    """Continuations drawn by batched speculative sampling (``rows`` rows of one prompt per
    batch, each accepting its own drafts) follow plain sampling's exact distribution (a
    chi-square test over every continuation): the rows are independent draws, and so are
    successive batches. The drafts are both accepted and rejected; the same test rejects what
    accepting every draft would give."""
    from collections import Counter

    from wmtp.eval.generate import Sampling, next_token_probs

    vocab, prompt, draws = 4, [1, 3, 0, 2], 3000
    model = sampling_model(vocab)
    sampling = Sampling(temperature=temperature, top_p=top_p)
    exact = continuation_probs(model, prompt, sampling, vocab)
    generator = torch.Generator().manual_seed(0)
    counts, drafted, accepted = Counter(), 0, 0
    for _ in range(draws // rows):
        outs, stats = speculative_generate_batch(
            model, [prompt] * rows, StopRule(letters), max_new_tokens=SAMPLED,
            sampling=sampling, generator=generator,
        )  # fmt: skip
        counts.update(tuple(out.tokens) for out in outs)
        total = SpeculativeStats.of_batch(stats)
        drafted, accepted = drafted + total.drafted, accepted + total.accepted
    assert 0.2 < accepted / drafted < 0.95  # both branches of the acceptance test ran often
    assert all(exact[cell] > 0 for cell in counts)  # nothing outside the nucleus
    assert chi_square_p_value(counts, exact) > 1e-3
    # what accepting every draft would give: heads 1, 2, 3 at the prompt's last position
    with torch.no_grad():
        heads_nV = model(torch.tensor([prompt]))[0, -1]
    naive = next_token_probs(heads_nV, sampling)
    wrong = Counter(
        tuple(torch.multinomial(naive, 1, generator=generator)[:, 0].tolist()) for _ in range(draws)
    )
    assert chi_square_p_value(wrong, exact) < 1e-6


def test_seeded_speculative_sampling_is_reproducible():
    """A seed gives the same batch of samples again; its rows draw apart (one prompt, distinct
    continuations)."""
    from wmtp.eval.generate import Sampling

    model, prompt = sampling_model(4), [1, 3, 0, 2]
    options = {"max_new_tokens": 8, "sampling": Sampling(temperature=1.5)}

    def drawn(rows):
        generator = torch.Generator().manual_seed(7)
        outs, stats = speculative_generate_batch(
            model, [prompt] * rows, StopRule(letters), generator=generator, **options
        )
        return [out.tokens for out in outs], [(row.forwards, row.accepted) for row in stats]

    first = drawn(16)
    assert drawn(16) == first and len({tuple(tokens) for tokens in first[0]}) > 8


def test_the_evaluator_draws_its_samples_in_speculative_batches():
    """``wmtp eval``'s samples of one problem, speculatively: ``batch_size`` rows at a time from
    the problem's seeded generator (the same samples again), acceptance summed over rows."""
    from wmtp.eval.completions import speculative_samples
    from wmtp.eval.generate import Sampling

    model, prompt, sampling = sampling_model(4), [1, 3, 0, 2], Sampling(temperature=1.5)
    options = {"n_samples": 5, "sampling": sampling, "max_new_tokens": 6, "seed": 3}

    def sampled():
        return speculative_samples(model, prompt, StopRule(letters), batch_size=2, **options)

    completions, stats = sampled()
    generator = torch.Generator().manual_seed(3)
    by_hand, rows = [], []
    for batch in (2, 2, 1):
        outs, batch_rows = speculative_generate_batch(
            model, [prompt] * batch, StopRule(letters), max_new_tokens=6,
            sampling=sampling, generator=generator,
        )  # fmt: skip
        by_hand, rows = by_hand + outs, rows + batch_rows
    assert [c.tokens for c in completions] == [c.tokens for c in by_hand]
    assert [c.tokens for c in sampled()[0]] == [c.tokens for c in completions]
    assert stats.prompt_forwards == 5  # a row's first token each
    assert stats.generated == sum(row.generated for row in rows) == 30
    assert stats.accepted == sum(row.accepted for row in rows) and stats.acceptance_by_head()


def test_the_decode_benchmark_reports_batched_speculative_figures():
    """``wmtp bench decode --peers``: batched speculative tokens/s beside plain decoding's, at
    batch 1 and at ``--batch`` rows, with that batch's acceptance (no timing asserted)."""
    from wmtp.eval.generate import Sampling
    from wmtp.eval.speed import speculative_peer_figures

    plain = {"batch1_tokens_per_s": 100.0, "batch4_tokens_per_s": 400.0}
    figures = speculative_peer_figures(
        partly_agreeing_model(), [1, 2, 3, 4], 8, 4, Sampling(temperature=1.0), plain
    )
    assert figures["batch4_ratio_vs_wmtp"] == round(figures["batch4_tokens_per_s"] / 400, 3)
    assert figures["batch1_tokens_per_s"] > 0 and 0 < figures["batch4_acceptance_rate"] <= 1
    assert 1 <= figures["batch4_tokens_per_forward"] <= 3


def test_a_draw_inverts_each_distributions_cumulative_weights_at_its_uniform():
    """``draw``: uniforms spread evenly over [0, 1) land on each token in proportion to its
    weight (normalised or not), to within one uniform's step; a token of weight 0 is never drawn,
    not even at the largest uniform below 1 (where rounding could reach the total)."""
    from wmtp.eval.speculative import draw

    torch.manual_seed(0)
    weights_GV = torch.rand(3, 50) * (torch.rand(3, 50) > 0.4)  # zeros in between
    weights_GV[1] *= 7.0  # not normalised
    weights_GV[2, 45:] = 0  # zeros at the end
    n = 20_000
    uniforms_N = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    uniforms_NG = torch.cat([uniforms_N[:, None].expand(-1, 3), torch.full((1, 3), 1 - 2**-24)])
    draws_NG = draw(weights_GV.expand(n + 1, -1, -1), uniforms_NG.float())
    for g in range(3):
        freq_V = torch.bincount(draws_NG[:n, g], minlength=50).double() / n
        expected_V = (weights_GV[g] / weights_GV[g].sum()).double()
        assert (freq_V[expected_V == 0] == 0).all() and weights_GV[g, draws_NG[n, g]] > 0
        torch.testing.assert_close(freq_V, expected_V, atol=2.0 / n, rtol=0)


def test_a_sampled_verify_step_compiled_with_its_verification_draws_what_eager_steps_draw():
    """The verify step compiled with its verification as its tail (Inductor on the CPU, the
    path a GPU runs minus the graph) and the eager step with the eager verification, from one
    seed, draw the same tokens; each row accepts some guesses and not others."""
    from wmtp.eval.generate import Sampling

    model, prompt = sampling_model(4), [1, 3, 0, 2]
    sampling = Sampling(temperature=0.9, top_p=0.9)

    def drawn(**steps):
        generator = torch.Generator().manual_seed(5)
        outs, stats = speculative_generate_batch(
            model, [prompt] * 4, StopRule(letters), max_new_tokens=10, sampling=sampling,
            generator=generator, **steps,
        )  # fmt: skip
        return [out.tokens for out in outs], SpeculativeStats.of_batch(stats)

    (compiled, stats), (eager, _) = drawn(compiled=True), drawn()
    assert compiled == eager and 0 < stats.accepted < stats.drafted


def test_a_torch_that_cannot_compile_the_verification_runs_it_eagerly_and_says_so_once(
    monkeypatch, caplog
):
    """Where the compiler fails on the verification (as Inductor of torch 2.11 did on CUDA;
    here Dynamo, made to meet a graph break in it), speculative sampling goes on with the step
    compiled and the verification eager, the same tokens, warning once; any other error in the
    verification is raised."""
    from wmtp.eval import speculative
    from wmtp.eval.generate import Sampling
    from wmtp.models import kv_cache

    verify = speculative.sampled_verification

    def unfusable(*args):
        torch._dynamo.graph_break()
        return verify(*args)

    monkeypatch.setattr(kv_cache, "_EAGER_TAILS", set())
    monkeypatch.setattr(speculative, "sampled_verification", unfusable)
    model, prompt = sampling_model(4), [1, 3, 0, 2]
    options = {"max_new_tokens": 8, "sampling": Sampling(temperature=1.5)}

    def drawn(**steps):
        generator = torch.Generator().manual_seed(7)
        outs, _ = speculative_generate_batch(
            model, [prompt] * 4, StopRule(letters), generator=generator, **options, **steps
        )
        return [out.tokens for out in outs]

    with caplog.at_level("WARNING", logger="wmtp.models.kv_cache"):
        assert drawn(compiled=True) == drawn(compiled=True) == drawn()
    warnings = [r for r in caplog.records if "into the step" in r.message]
    assert len(warnings) == 1 and "Verification" in warnings[0].getMessage()

    def broken(logits_BTnV, guesses_BG, *args):  # in verify steps: the prompt's passes
        if guesses_BG.shape[1]:
            raise ValueError("not the compiler's")
        return verify(logits_BTnV, guesses_BG, *args)

    monkeypatch.setattr(kv_cache, "_EAGER_TAILS", set())
    monkeypatch.setattr(speculative, "sampled_verification", broken)
    with pytest.raises(ValueError, match="not the compiler's"):
        drawn(compiled=True)
