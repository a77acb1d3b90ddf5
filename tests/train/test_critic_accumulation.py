"""A critic step on the path ``wmtp run`` takes (real ``Trainer``, pairs drawn by its own batch
source from a JSONL dataset) against DESIGN.md ("Critic", "TD errors and GAE") in plain loops:
Bradley-Terry on mean response scores over the step's pairs, plus the weighted lambda-return
Huber loss over the step's target positions (R = 1 correct, 0 incorrect), gradients included,
however the pairs are split into micro-batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.train.test_weighted_runs import _dataset

GAMMA, LAM, MARGIN, LAMBDA_WEIGHT, HUBER = 1.0, 0.8, 0.25, 0.5, 0.3


def _trainer(tmp_path, head: str, micro: int, accum: int):
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer

    loss = f'pairwise = "bradley_terry", margin = {MARGIN}, lambda_return_weight = {LAMBDA_WEIGHT}'
    text = f"""
[experiment]
name = "critic_accumulation"
pipeline = "critic"
seed = 0
runs_dir = "{tmp_path / "runs"}"
[tokenizer]
kind = "byte"
[model.critic]
kind = "value_model"
flavour = "tiny"
dim = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
max_seq_len = 128
dtype = "float32"
attention = "eager"
head = {{ kind = "{head}" }}
[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false
compile = false
[training]
micro_batch_size = {micro}
grad_accum_steps = {accum}
max_steps = 1
grad_clip = 0.0
critic_loss = {{ {loss}, lam = {LAM}, huber_delta = {HUBER} }}
[data]
kind = "jsonl"
path = "{_dataset(tmp_path / "train.jsonl")}"
max_length = 128
template = "plain"
pairs = {{ length_bins = [64, 128], max_pairs_per_problem = 2 }}
"""
    path = tmp_path / "critic.toml"
    path.write_text(text)
    trainer = Trainer(load_recipe(path).recipe, text, tmp_path / "run", init_distributed("cpu"))
    return trainer.build()


def _lambda_return_errors(values: list, response: list[int], reward: float) -> list:
    """Huber errors of every value TD reads (V[t-1] of each response token t) against its
    lambda-return V[t-1] + A[t], and of the last response token's value against R."""
    v = [x.item() for x in values]
    delta = {
        t: (reward if i == len(response) - 1 else GAMMA * v[t]) - v[t - 1]
        for i, t in enumerate(response)
    }
    adv, following = {}, 0.0
    for t in reversed(response):
        adv[t] = following = delta[t] + GAMMA * LAM * following
    targets = {t - 1: v[t - 1] + adv[t] for t in response} | {response[-1]: reward}
    return [F.huber_loss(values[p], torch.tensor(y), delta=HUBER) for p, y in targets.items()]


def _reference_loss(model, micro_batches: list[dict]) -> torch.Tensor:
    """Every row read alone (unpadded); means over the step's pairs and target positions."""
    pairwise, errors = [], []
    for mb in micro_batches:
        means = {}
        for half, reward in (("chosen", 1.0), ("rejected", 0.0)):
            b = mb[half]
            assert b["is_correct"] == [reward == 1.0] * len(b["is_correct"])  # R from the label
            for row, labels in enumerate(b["labels"].tolist()):
                response = [t for t, y in enumerate(labels) if y != -100]
                ids = b["input_ids"][row, : response[-1] + 1]
                scores = model.scores(ids[None])[0]
                means[half, row] = sum(scores[t] for t in response) / len(response)
                errors += _lambda_return_errors(list(model.head.activate(scores)), response, reward)
        for row in range(mb["chosen"]["input_ids"].shape[0]):
            pairwise.append(-F.logsigmoid(means["chosen", row] - means["rejected", row] - MARGIN))
    return sum(pairwise) / len(pairwise) + LAMBDA_WEIGHT * sum(errors) / len(errors)


@pytest.mark.parametrize(
    ("head", "micro", "accum"), [("linear", 2, 2), ("sigmoid", 1, 3), ("mlp", 3, 1)]
)
def test_critic_step_equals_the_loops_over_the_step(tmp_path, head, micro, accum):
    trainer = _trainer(tmp_path, head, micro, accum)
    micro_batches = trainer.batches.next_step()
    assert len(micro_batches) == accum
    for mb in micro_batches:  # a correct and an incorrect solution of one problem per row
        assert mb["chosen"]["problem_id"] == mb["rejected"]["problem_id"]
    out = trainer.pipeline.forward_backward(trainer, micro_batches)
    got = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    trainer.model.zero_grad(set_to_none=True)
    ref = _reference_loss(trainer.model, micro_batches)
    ref.backward()
    assert out.loss == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
