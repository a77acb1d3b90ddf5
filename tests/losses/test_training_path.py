"""What a training step computes, on the path the trainer takes, against references from DESIGN.md.

A real ``Trainer`` (tiny models on the CPU, fp32, eager attention) is built from a recipe and its
pipeline's ``forward_backward`` runs on packed batches made by the collator training uses
(``wmtp.data.collate.pack_batch``). The references read each example *alone* (no packing) and
apply DESIGN.md's "Conventions that must hold everywhere" in plain Python loops: head k at
position t scores token t+k with the weight w[t+k]; each head's loss is sum(w * ce) / sum(w) over
the step's valid targets; heads averaged with the normalised depth weights; TD errors, GAE,
whitening over valid tokens and AWR weights per response; Rho-1's top k% per head.

The examples have prompts of one to three masked tokens, so in a packed row heads 2 and 3 at the
last tokens of one example would reach the response of the next one, and one response has a
single token.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from wmtp.data.collate import pack_batch, pack_rows, pad_batch
from wmtp.data.examples import Encoded

N_HEADS = 3
ROW = 16
DEPTH = (1.0, 0.5, 0.25)
GAMMA, LAM, BETA, W_MIN, W_MAX = 0.9, 0.8, 0.5, 0.2, 4.0
ATOL, RTOL = 1e-6, 1e-5
"""fp32 on the CPU: the packed and the reference computations differ only in summation order."""

# (masked prompt tokens, response tokens, correct)
SHAPES = [(1, 5, True), (2, 1, False), (1, 6, True), (3, 4, False), (1, 3, True)]


def _examples(shapes=SHAPES, seed: int = 0) -> list[Encoded]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, (n_prompt, n_response, correct) in enumerate(shapes):
        ids = torch.randint(3, 250, (n_prompt + n_response,), generator=gen).tolist()
        labels = [-100] * n_prompt + ids[n_prompt:]
        out.append(Encoded(ids, labels, problem_id=f"p{i}", is_correct=correct))
    return out


def _packed(examples: list[Encoded]) -> dict:
    return pack_batch(pack_rows(examples, ROW), pad_id=258, row_length=ROW)


MODEL = """
kind = "{kind}"
flavour = "tiny"
dim = 32
n_layers = {layers}
n_heads = 2
n_kv_heads = 1
max_seq_len = 64
dtype = "float32"
attention = "eager"
"""


def _trainer(tmp_path: Path, pipeline: str, *, strategy: str = "per_head", accum: int = 1):
    """A real trainer of ``pipeline`` (models fresh from their seed); batches come from the test."""
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer

    policy = MODEL.format(kind="llama_mtp", layers=2 + N_HEADS) + f"n_future_tokens = {N_HEADS}\n"
    extra = {
        "baseline": '[weighting]\nkind = "uniform"\n',
        "verifiable": (
            "[model.critic]"
            + MODEL.format(kind="value_model", layers=2)
            + 'head = { kind = "linear" }\n'
            + f'[weighting]\nkind = "td"\ngamma = {GAMMA}\nlam = {LAM}\nbeta = {BETA}\n'
            + f'min_weight = {W_MIN}\nmax_weight = {W_MAX}\nnormalize = {{ kind = "batch" }}\n'
        ),
        "rho1": (
            "[model.reference]"
            + MODEL.format(kind="llama_mtp", layers=2 + N_HEADS)
            + f"n_future_tokens = {N_HEADS}\n"
            + '[weighting]\nkind = "rho1"\nk_percent = 0.4\n'
        ),
    }[pipeline]
    text = f"""
[experiment]
name = "audit"
pipeline = "{pipeline}"
seed = 0
runs_dir = "{tmp_path / "runs"}"
[tokenizer]
kind = "byte"
[model.policy]
{policy}
{extra}
[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false
compile = false
[training]
micro_batch_size = 2
grad_accum_steps = {accum}
max_steps = 1
mtp_loss = "{strategy}"
grad_clip = 0.0                          # gradients as the loss gives them
head_weights = {list(DEPTH)}
[data]
kind = "jsonl"
path = "{tmp_path / "unused.jsonl"}"
max_length = {ROW}
packing = true
"""
    path = tmp_path / "audit.toml"
    path.write_text(text)
    recipe = load_recipe(path).recipe
    ctx = init_distributed("cpu")
    trainer = Trainer(recipe, text, tmp_path / "run", ctx, console=False)
    return trainer.build(batch_source=lambda _: None)  # the test hands the batches over


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and got
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, atol=ATOL, rtol=RTOL, msg=name)


# --- references (each example alone, DESIGN.md's text in loops) -----------------------------------


def _head_ce_alone(model, e: Encoded) -> list[list[float | torch.Tensor | None]]:
    """``ce[k-1][t]``: cross-entropy of head k at position t of example ``e`` read alone (a
    differentiable scalar), ``None`` where its target t+k is masked or past the end."""
    logits = model(torch.tensor([e.input_ids]))[0]  # [L, n, V]
    out = []
    for k in range(1, N_HEADS + 1):
        row = []
        for t in range(len(e)):
            if t + k >= len(e) or e.labels[t + k] == -100:
                row.append(None)
                continue
            lg = logits[t, k - 1].float()
            row.append(torch.logsumexp(lg, 0) - lg[e.labels[t + k]])
        out.append(row)
    return out


def _mtp_reference(model, examples, weights) -> torch.Tensor:
    """sum_k d_k * sum(w[t+k] * ce_k[t]) / sum(w[t+k]) over every example of the step."""
    d = [x / sum(DEPTH) for x in DEPTH]
    num = [0.0] * N_HEADS
    den = [0.0] * N_HEADS
    for e, w in zip(examples, weights, strict=True):
        ce = _head_ce_alone(model, e)
        for k in range(1, N_HEADS + 1):
            for t, c in enumerate(ce[k - 1]):
                if c is not None:
                    num[k - 1] = num[k - 1] + w[t + k] * c
                    den[k - 1] += w[t + k]
    return sum(d[k] * num[k] / den[k] for k in range(N_HEADS))


def _td_weights_reference(critic, examples) -> list[list[float]]:
    """Per example: TD errors, GAE, whitening over every response token of the batch, AWR."""
    advantages = []
    for e in examples:
        with torch.no_grad():
            v = critic(torch.tensor([e.input_ids]))[0].tolist()  # value after each token
        reward = 1.0 if e.is_correct else 0.0
        response = [t for t, y in enumerate(e.labels) if y != -100]
        delta = {}
        for i, t in enumerate(response):
            last = i == len(response) - 1
            delta[t] = (reward if last else GAMMA * v[t]) - v[t - 1]
        adv, following = {}, 0.0
        for t in reversed(response):
            adv[t] = delta[t] + GAMMA * LAM * following
            following = adv[t]
        advantages.append(adv)
    flat = [a for adv in advantages for a in adv.values()]
    mean = sum(flat) / len(flat)
    var = sum((a - mean) ** 2 for a in flat) / (len(flat) - 1)
    weights = []
    for e, adv in zip(examples, advantages, strict=True):
        w = [0.0] * len(e)
        for t, a in adv.items():
            z = (a - mean) / math.sqrt(var + 1e-8)
            w[t] = math.exp(min(max(z / BETA, math.log(W_MIN)), math.log(W_MAX)))
        weights.append(w)
    return weights


def _rho1_reference(policy, reference, examples, k_percent) -> torch.Tensor:
    """Per head: the top ceil(k% * valid) targets of the batch by CE_policy - CE_reference (each
    example alone), their mean policy CE; heads averaged with the depth weights."""
    d = [x / sum(DEPTH) for x in DEPTH]
    ce_pol = [_head_ce_alone(policy, e) for e in examples]
    with torch.no_grad():
        ce_ref = [_head_ce_alone(reference, e) for e in examples]
    total = 0.0
    for k in range(N_HEADS):
        scored = [
            (float(c.detach()) - float(r), c)
            for pol, ref in zip(ce_pol, ce_ref, strict=True)
            for c, r in zip(pol[k], ref[k], strict=True)
            if c is not None
        ]
        n_keep = math.ceil(k_percent * len(scored) - 1e-9)
        kept = sorted(scored, key=lambda s: -s[0])[:n_keep]
        total = total + d[k] * sum(c for _, c in kept) / n_keep
    return total


# --- the tests --------------------------------------------------------------------------------------

STRATEGIES = [("per_head", False), ("per_head", True), ("chunked", False), ("joint", False)]
"""Every ``training.mtp_loss``; per_head in one backward is how the trainer runs it sharded."""


def _with_strategy(tmp_path, pipeline, strategy, one_backward, **kw):
    trainer = _trainer(tmp_path, pipeline, strategy=strategy, **kw)
    trainer.loss_config = dataclasses.replace(trainer.loss_config, one_backward=one_backward)
    assert trainer.loss_config.depth_weights == DEPTH
    return trainer


CASES = [(*s, "packed") for s in STRATEGIES] + [("per_head", False, "padded")]


@pytest.mark.parametrize(("strategy", "one_backward", "layout"), CASES)
def test_verifiable_step_equals_each_example_alone(tmp_path, strategy, one_backward, layout):
    """Critic TD weights per example, w[t+k] of the same example, no target in the next one,
    step-global sum(w) per head, depth-weighted average: loss and every policy gradient."""
    examples = _examples()
    if layout == "packed":
        batch = _packed(examples)
        assert batch["input_ids"].shape[0] < len(examples)  # rows hold several examples
    else:
        batch = pad_batch(examples, pad_id=258)
    trainer = _with_strategy(tmp_path, "verifiable", strategy, one_backward)

    out = trainer.pipeline.forward_backward(trainer, [batch])
    got = _grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    weights = _td_weights_reference(trainer.frozen["critic"], examples)
    ref = _mtp_reference(trainer.model, examples, weights)
    ref.backward()
    assert out.loss == pytest.approx(ref.item(), rel=RTOL, abs=ATOL)
    _assert_same_grads(got, _grads(trainer.model))
    # The example exercises both clamps of the AWR weights ...
    assert out.figures["weight/clipped_min"] > 0 and out.figures["weight/clipped_max"] > 0
    # ... and, packed, targets of heads 2 and 3 that lie in the next example (left out).
    if layout == "packed":
        for k in (2, 3):
            same_row = int((batch["labels"][:, k:] != -100).sum())
            assert out.figures[f"tokens/head{k}"] < same_row


def test_accumulated_packed_micro_batches_normalise_by_the_step_weight_sum(tmp_path):
    """Two micro-batches of packed rows: each head divides by its valid targets of the whole
    step, so the step equals the reference over all its examples (uniform weights)."""
    first, second = _examples(seed=1), _examples(SHAPES[:3], seed=2)
    trainer = _trainer(tmp_path, "baseline", accum=2)
    out = trainer.pipeline.forward_backward(trainer, [_packed(first), _packed(second)])
    got = _grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    examples = first + second
    ref = _mtp_reference(trainer.model, examples, [[1.0] * len(e) for e in examples])
    ref.backward()
    assert out.loss == pytest.approx(ref.item(), rel=RTOL, abs=ATOL)
    _assert_same_grads(got, _grads(trainer.model))


def test_rho1_step_on_packed_rows_equals_each_example_alone(tmp_path):
    examples = _examples()
    trainer = _trainer(tmp_path, "rho1")
    out = trainer.pipeline.forward_backward(trainer, [_packed(examples)])
    got = _grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    ref = _rho1_reference(trainer.model, trainer.frozen["reference"], examples, 0.4)
    ref.backward()
    assert out.loss == pytest.approx(ref.item(), rel=RTOL, abs=ATOL)
    _assert_same_grads(got, _grads(trainer.model))


def test_accumulated_verifiable_step_whitens_over_the_whole_step(tmp_path):
    first, second = _examples(seed=1), _examples(SHAPES[:3], seed=2)
    trainer = _trainer(tmp_path, "verifiable", accum=2)
    out = trainer.pipeline.forward_backward(trainer, [_packed(first), _packed(second)])
    got = _grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    examples = first + second
    weights = _td_weights_reference(trainer.frozen["critic"], examples)
    ref = _mtp_reference(trainer.model, examples, weights)
    ref.backward()
    assert out.loss == pytest.approx(ref.item(), rel=RTOL, abs=ATOL)
    _assert_same_grads(got, _grads(trainer.model))
