"""What a critic step computes on the path ``wmtp run recipes/critic.toml`` takes, against
references written from DESIGN.md ("Critic", "TD errors and GAE") in plain Python loops.

A real ``Trainer`` is built from a recipe over a JSONL dataset in the README's layout (one solution
per line, ``is_correct`` its label); its batch source draws the pairs and its pipeline's
``forward_backward`` runs them. The references take the solutions from the table the JSONL
is written from, and the critic's per-token scores from its model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from wmtp.data.examples import format_prompt

GAMMA = 1.0
"""The critic's lambda-returns are undiscounted (``LAMBDA_RETURN_GAMMA``)."""
LAM, MARGIN, LAMBDA_WEIGHT, HUBER = 0.9, 0.25, 0.5, 0.3

# problem -> [(output, is_correct)]: in each problem the correct and incorrect solutions differ in
# length, so a step's rows have different numbers of response tokens.
SOLUTIONS = {
    "p0": [("return a + b", True), ("return a - b - 1 # no", False)],
    "p1": [("return x * 2 if x else 0", True), ("return x", False)],
    "p2": [("s = sorted(v)\nreturn s[0]", True), ("return v[1]", False)],
    "p3": [("return n % 2 == 0", True), ("return n % 2 == 1 or n < 0", False)],
}


def _write_data(directory: Path) -> Path:
    lines = [
        {
            "instruction": f"Solve {p}.",
            "input": "",
            "output": out,
            "problem_id": p,
            "is_correct": ok,
        }
        for p, solutions in SOLUTIONS.items()
        for out, ok in solutions
    ]
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _recipe_text(tmp_path: Path, head: str, micro: int, accum: int) -> str:
    return f"""
[experiment]
name = "critic"
pipeline = "critic"
seed = 3
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
max_seq_len = 256
dtype = "float32"
attention = "eager"
head = {head}
[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false
compile = false
[training]
micro_batch_size = {micro}
grad_accum_steps = {accum}
max_steps = 2
grad_clip = 0.0
critic_loss = {{ pairwise = "bradley_terry", margin = {MARGIN}, lambda_return_weight = {LAMBDA_WEIGHT}, lam = {LAM}, huber_delta = {HUBER} }}
[data]
kind = "jsonl"
path = "{_write_data(tmp_path)}"
template = "alpaca"
max_length = 256
split = {{ heldout_fraction = 0.0 }}
pairs = {{ length_bins = [256], max_pairs_per_problem = 1 }}
"""


def _trainer(tmp_path: Path, *, head: str = '{ kind = "linear" }', micro: int = 4, accum: int = 1):
    """A real critic trainer of the recipe above, with its data."""
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.loop import Trainer

    tmp_path.mkdir(parents=True, exist_ok=True)
    text = _recipe_text(tmp_path, head, micro, accum)
    path = tmp_path / "critic.toml"
    path.write_text(text)
    recipe = load_recipe(path).recipe
    trainer = Trainer(recipe, text, tmp_path / "run", init_distributed("cpu"), console=False)
    return trainer.build()


# --- references (DESIGN.md in loops) -------------------------------------------------------------


def _expected_row(problem: str, correct: bool) -> tuple[str, str]:
    """(prompt text, learned text) of the problem's correct or incorrect solution."""
    (output,) = [out for out, ok in SOLUTIONS[problem] if ok == correct]
    return format_prompt(f"Solve {problem}.", ""), output


def _lambda_return_terms(values: list[float], response: list[int], reward: float):
    """``(target, value)`` of every position the lambda-return loss reads in one row.

    V[t] is the value after token t. delta[t] = gamma V[t] - V[t-1] inside the response,
    delta[T] = R - V[T-1] at its last token; A[t] = delta[t] + gamma lam A[t+1]. The value before
    response token t, V[t-1], has the target V[t-1] + A[t]; the value after the last one, R.
    """
    advantages: dict[int, float] = {}
    following = 0.0
    for i in reversed(range(len(response))):
        t = response[i]
        nxt = reward if i == len(response) - 1 else GAMMA * values[t]
        following = nxt - values[t - 1] + GAMMA * LAM * following
        advantages[t] = following
    terms = [(values[t - 1] + advantages[t], values[t - 1]) for t in response]
    return [*terms, (reward, values[response[-1]])]


def _huber(x: float, target: float) -> float:
    d = abs(x - target)
    return 0.5 * d * d if d < HUBER else HUBER * (d - 0.5 * HUBER)


@torch.no_grad()
def _reference_step(model, micro_batches: list[dict]) -> tuple[float, float]:
    """(pairwise, lambda-return) losses of one step: pairwise averaged over the step's pairs,
    the lambda-return Huber averaged over the step's target positions (both halves, all rows)."""
    squash = type(model.head).__name__ == "SigmoidValueHead"
    pairwise, n_pairs, huber, n_targets = 0.0, 0, 0.0, 0
    for pair in micro_batches:
        means = {}
        for half, reward in (("chosen", 1.0), ("rejected", 0.0)):
            scores = model.scores(pair[half]["input_ids"]).tolist()
            for row, labels in enumerate(pair[half]["labels"].tolist()):
                response = [t for t, y in enumerate(labels) if y != -100]
                means[half, row] = sum(scores[row][t] for t in response) / len(response)
                values = [1 / (1 + math.exp(-s)) if squash else s for s in scores[row]]
                for target, value in _lambda_return_terms(values, response, reward):
                    huber += _huber(value, target)
                    n_targets += 1
        for row in range(pair["chosen"]["input_ids"].shape[0]):
            gap = means["chosen", row] - means["rejected", row] - MARGIN
            pairwise += math.log1p(math.exp(-gap))  # -log sigmoid(gap)
            n_pairs += 1
    return pairwise / n_pairs, huber / n_targets


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- the tests -----------------------------------------------------------------------------------


def test_pairs_are_a_correct_and_an_incorrect_solution_of_one_problem(tmp_path):
    """Each micro-batch row of the chosen half is a problem's correct solution, the same row of
    the rejected half its incorrect one; only the solution and EOS are learned (the prompt and
    the padding are -100); the step holds every problem once (one pair per problem)."""
    trainer = _trainer(tmp_path)
    tok = trainer.tokenizer
    (pair,) = trainer.batches.next_step()
    problems = pair["chosen"]["problem_id"]
    assert sorted(problems) == sorted(SOLUTIONS) and pair["rejected"]["problem_id"] == problems
    assert pair["chosen"]["is_correct"] == [True] * 4
    assert pair["rejected"]["is_correct"] == [False] * 4
    for half, correct in (("chosen", True), ("rejected", False)):
        for row, problem in enumerate(problems):
            prompt, output = _expected_row(problem, correct)
            ids = pair[half]["input_ids"][row].tolist()
            labels = pair[half]["labels"][row].tolist()
            learned = [y for y in labels if y != -100]
            start = labels.index(learned[0])
            assert learned == ids[start : start + len(learned)]  # unshifted labels
            assert tok.decode(ids[:start]) == prompt and ids[0] == tok.bos_id
            assert tok.decode(learned[:-1]) == output and learned[-1] == tok.eos_id
            assert set(ids[start + len(learned) :]) <= {tok.pad_id}  # padding, not learned


@pytest.mark.parametrize(
    "head",
    ['{ kind = "linear" }', '{ kind = "sigmoid" }', '{ kind = "mlp", activation = "silu" }'],
)
def test_critic_step_matches_the_design_in_loops(tmp_path, head):
    """Bradley-Terry on mean response scores (pre-sigmoid) with the recipe's margin, plus the
    recipe's weight x Huber(lambda-return, R = 1 correct / 0 incorrect) with its lam, over the
    values after the head's activation."""
    from wmtp.models import value

    trainer = _trainer(tmp_path, head=head)
    kinds = {"linear": value.LinearValueHead, "sigmoid": value.SigmoidValueHead}
    kind = head.split('"')[1]
    assert type(trainer.model.head) is kinds.get(kind, value.MLPValueHead)
    batches = trainer.batches.next_step()
    pairwise, lambda_return = _reference_step(trainer.model, batches)
    out = trainer.pipeline.forward_backward(trainer, batches)
    assert out.components["loss/pairwise"] == pytest.approx(pairwise, rel=1e-5)
    assert out.components["loss/lambda_return"] == pytest.approx(lambda_return, rel=1e-5)
    assert out.loss == pytest.approx(pairwise + LAMBDA_WEIGHT * lambda_return, rel=1e-5)


def test_two_micro_batches_of_two_pairs_train_as_one_of_four(tmp_path):
    """The step's objective does not depend on how its pairs are split into micro-batches: the
    pairwise loss is a mean over the step's pairs, the lambda-return loss a mean over the step's
    target positions (rows of different lengths included)."""
    whole = _trainer(tmp_path / "whole", micro=4, accum=1)
    split = _trainer(tmp_path / "split", micro=2, accum=2)
    one, two = whole.batches.next_step(), split.batches.next_step()
    assert [p for b in two for p in b["chosen"]["problem_id"]] == one[0]["chosen"]["problem_id"]
    out_one = whole.pipeline.forward_backward(whole, one)
    out_two = split.pipeline.forward_backward(split, two)
    assert out_two.components == pytest.approx(out_one.components, rel=1e-5)
    want, got = _grads(whole.model), _grads(split.model)
    assert got.keys() == want.keys() and want
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_two_ranks_of_two_pairs_train_as_one_process_of_four(tmp_path):
    """torchrun, gloo: the pairwise and lambda-return means are over every rank's pairs and
    target positions, so the losses and figures of two ranks are one process's."""
    import os
    import subprocess
    import sys

    from wmtp.train.metrics import read_metrics
    from wmtp.train.runner import run_recipe

    recipe = tmp_path / "critic.toml"
    recipe.write_text(_recipe_text(tmp_path, '{ kind = "linear" }', micro=4, accum=1))
    one = run_recipe(recipe, ["training.eval_every=0"], console=False)
    sets = ["training.micro_batch_size=2", "training.eval_every=0"]
    sets.append(f"experiment.runs_dir='{tmp_path / 'two'}'")
    cmd = [sys.executable, "-m", "wmtp.cli", "run", str(recipe), "--nproc-per-node", "2"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = read_metrics((tmp_path / "two" / "critic" / "latest").resolve())
    keys = ("loss", "train/loss_pairwise", "train/loss_lambda_return", "train/pair_margin")
    want = [{k: r[k] for k in keys} for r in read_metrics(one.run_dir) if "loss" in r]
    got = [{k: r[k] for k in keys} for r in two if "loss" in r]
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-4, abs=1e-6)
