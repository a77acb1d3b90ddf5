"""Rho-1 as the production recipes run it: a one-head (next-token) reference, as ref_tuning
trains, scoring every head's targets; selection per micro-batch (README "Weighted pipelines"),
each head's loss divided by the tokens kept over the whole step.

A real ``Trainer`` runs ``forward_backward`` on two micro-batches of packed rows (or the same
examples padded); the reference reads each example alone in plain loops.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.losses.test_training_path import (
    DEPTH,
    MODEL,
    N_HEADS,
    ROW,
    SHAPES,
    _assert_same_grads,
    _examples,
    _grads,
    _head_ce_alone,
    _packed,
)
from wmtp.data.collate import pad_batch
from wmtp.data.examples import Encoded

K_PERCENT = 0.3
"""0.3 of 12, 11, ... valid targets: fractional counts, rounded up."""


def _trainer(tmp_path):
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer

    text = f"""
[experiment]
name = "rho1_one_head"
pipeline = "rho1"
seed = 0
runs_dir = "{tmp_path / "runs"}"
[tokenizer]
kind = "byte"
[model.policy]
{MODEL.format(kind="llama_mtp", layers=2 + N_HEADS)}
n_future_tokens = {N_HEADS}
[model.reference]
{MODEL.format(kind="llama_mtp", layers=3)}
n_future_tokens = 1
[weighting]
kind = "rho1"
k_percent = {K_PERCENT}
[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false
compile = false
[training]
micro_batch_size = 2
grad_accum_steps = 2
max_steps = 1
grad_clip = 0.0
head_weights = {list(DEPTH)}
[data]
kind = "jsonl"
path = "{tmp_path / "unused.jsonl"}"
max_length = {ROW}
packing = true
"""
    path = tmp_path / "rho1.toml"
    path.write_text(text)
    trainer = Trainer(load_recipe(path).recipe, text, tmp_path / "run", init_distributed("cpu"))
    return trainer.build(batch_source=lambda _: None)


@torch.no_grad()
def _next_token_ce_alone(reference, e: Encoded) -> list[float | None]:
    """``ce[j]``: the reference's next-token loss of token j (from position j - 1), alone."""
    logits = reference(torch.tensor([e.input_ids]))[0, :, 0]  # [L, V], its only head
    ce: list[float | None] = [None]
    for j in range(1, len(e)):
        lg = logits[j - 1].float()
        ce.append(None if e.labels[j] == -100 else float(torch.logsumexp(lg, 0) - lg[e.labels[j]]))
    return ce


def _rho1_step_reference(policy, reference, micro_batches: list[list[Encoded]]) -> torch.Tensor:
    """Per micro-batch and head k: keep the ceil(k% * valid) targets t+k of largest
    CE_policy_k(t) - CE_reference(t+k); each head: sum of kept CE / kept over the step."""
    d = [x / sum(DEPTH) for x in DEPTH]
    num, den = [0.0] * N_HEADS, [0] * N_HEADS
    for examples in micro_batches:
        pol = [_head_ce_alone(policy, e) for e in examples]
        ref = [_next_token_ce_alone(reference, e) for e in examples]
        for k in range(1, N_HEADS + 1):
            scored = [
                (float(c.detach()) - r[t + k], c)
                for p, r in zip(pol, ref, strict=True)
                for t, c in enumerate(p[k - 1])
                if c is not None
            ]
            n_keep = math.ceil(K_PERCENT * len(scored) - 1e-9)
            kept = sorted(scored, key=lambda s: -s[0])[:n_keep]
            num[k - 1] = num[k - 1] + sum(c for _, c in kept)
            den[k - 1] += n_keep
    return sum(d[k] * num[k] / den[k] for k in range(N_HEADS))


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_one_head_reference_selects_per_micro_batch(tmp_path, layout):
    first, second = _examples(seed=1), _examples(SHAPES[:3], seed=2)
    collate = _packed if layout == "packed" else (lambda es: pad_batch(es, pad_id=258))
    trainer = _trainer(tmp_path)
    assert trainer.frozen["reference"].n_heads == 1
    out = trainer.pipeline.forward_backward(trainer, [collate(first), collate(second)])
    got = _grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    ref = _rho1_step_reference(trainer.model, trainer.frozen["reference"], [first, second])
    ref.backward()
    assert out.loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    _assert_same_grads(got, _grads(trainer.model))
    for k in range(1, N_HEADS + 1):  # fractional counts are rounded up, per micro-batch
        assert out.figures[f"rho1/kept_fraction_head{k}"] > K_PERCENT
