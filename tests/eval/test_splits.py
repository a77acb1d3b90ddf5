"""Which problems an evaluation scores: a trained tiny run's held-out problems only (the seen ones
apart when asked), a JSONL dataset's split with the runs behind a model, a pretrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.eval.test_eval_command import heldout_problems, invoke, summary_of
from tests.eval.tiny_runs import critic, policy, train
from tests.train.train_helpers import FAST, TINY, runs_override
from wmtp.errors import RunError
from wmtp.eval.benchmarks import Benchmark, load_humaneval
from wmtp.eval.splits import (
    SAMPLE_SEED,
    TrainingProblems,
    choose_problems,
    training_of_checkpoint,
    training_problems,
)
from wmtp.train.runner import run_recipe

GREEDY_AND_SHORT = (
    "--set",
    "evaluation.temperature=0",
    "--set",
    "evaluation.n_samples=1",
    "--set",
    "evaluation.k=[1]",
    "--set",
    "evaluation.max_new_tokens=6",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """recipes/tiny.toml (the built-in HumanEval, held-out fraction 0.1) trained for 2 steps,
    with a checkpoint after each."""
    tmp = tmp_path_factory.mktemp("tiny")
    steps = ["training.max_steps=2", "training.checkpoint_every=1"]
    steps += ["training.schedule.warmup_steps=1", "training.eval_every=1"]
    result = run_recipe(TINY, [runs_override(tmp), *FAST, *steps], console=False)
    return result.run_dir


def samples(folder: Path) -> list[dict]:
    lines = (folder / "humaneval" / "samples.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_trained_run_is_scored_on_its_heldout_problems_only(tiny_run, tmp_path):
    args = ["--set", "evaluation.max_problems=164", *GREEDY_AND_SHORT]
    result = invoke("eval", tiny_run, "--no-progress", "--out", tmp_path, *args)
    assert result.exit_code == 0, result.output
    scored = [line["task_id"] for line in samples(tmp_path)]
    assert set(scored) == heldout_problems() and len(scored) == 16  # nothing it trained on
    summary = summary_of(tmp_path)
    assert summary["split"]["unseen"] == 16 and summary["split"]["seen"] == 148
    assert set(summary["results"]) == {"unseen"}
    assert "all 16 unseen" in result.flat
    assert "the built-in HumanEval split (held-out fraction 0.1)" in result.flat


def test_include_seen_scores_the_trained_problems_apart(tiny_run, tmp_path):
    args = ["--include-seen", "--set", "evaluation.max_problems=2", *GREEDY_AND_SHORT]
    result = invoke("eval", tiny_run, "--no-progress", "--out", tmp_path, *args)
    assert result.exit_code == 0, result.output
    by_group = {True: set(), False: set()}
    for line in samples(tmp_path):
        by_group[line["seen"]].add(line["task_id"])
    assert by_group[False] <= heldout_problems() and len(by_group[False]) == 2
    assert not by_group[True] & heldout_problems() and len(by_group[True]) == 2
    summary = summary_of(tmp_path)
    assert summary["split"]["scored"] == {"unseen": 2, "seen": 2}
    assert summary["results"]["seen"]["problems"] == 2
    assert "2 of 16 unseen" in result.flat and "2 of 148 seen" in result.flat


def test_two_checkpoints_of_one_run_keep_both_results(tiny_run):
    for target in (tiny_run / "checkpoints" / "step-1", tiny_run):  # the run: its newest, step 2
        result = invoke("eval", target, "--no-progress", "--set", "evaluation.max_problems=1")
        assert result.exit_code == 0, result.output
    first, second = (summary_of(tiny_run / "eval" / f"step-{n}") for n in (1, 2))
    assert (first["step"], second["step"]) == (1, 2)
    assert first["model"].endswith("step-1") and second["model"].endswith("step-2")


def test_a_jsonl_split_and_the_runs_behind_a_model(tmp_path):
    """A verifiable run (seed 1) weighted by a critic trained on another split (seed 2): both
    training splits count as seen, each source named."""
    critic_run = train(tmp_path, "critic", "critic", critic(), seed=2)
    body = policy() + critic(critic_run) + '[weighting]\nkind = "td"\n'
    run = train(tmp_path, "verifiable", "verifiable", body, seed=1)

    own = training_problems(run / "recipe.toml")
    alone = training_problems(critic_run / "recipe.toml")
    assert len(alone.seen) == 7  # 10 problems, 3 held out
    assert alone.seen < own.seen <= {f"HumanEval/{p}" for p in range(10)}
    assert own.split.endswith("(held-out fraction 0.3, seed 1)")
    assert own.sources[0].startswith(f"{run}: verifiable run, 7 problems of ")
    assert own.sources[1].startswith(f"{critic_run}: critic run, 7 problems of ")
    scored = choose_problems(load_humaneval(), own, include_seen=False, max_problems=None)
    assert scored.available == {"unseen": 164 - len(own.seen), "seen": len(own.seen)}
    assert not {p.task_id for p in scored.problems} & own.seen


def test_a_pretrained_model_has_no_training_data(tmp_path):
    training = training_of_checkpoint(tmp_path, pretrained=True)
    assert training.seen == frozenset() and training.split == "none (a pretrained model)"
    assert "no training data recorded" in training.sources[0]
    assert training_of_checkpoint(tmp_path).split == "none (no recipe.toml with these weights)"


def test_a_benchmark_seen_whole_is_scored_only_when_asked():
    bench = load_humaneval()
    two = Benchmark(bench.name, bench.problems[:2], bench.stop)
    everything = TrainingProblems(frozenset(p.task_id for p in two.problems), "all of it", ())
    with pytest.raises(RunError, match="none is left unseen to score; --include-seen"):
        choose_problems(two, everything, include_seen=False, max_problems=None)
    scored = choose_problems(two, everything, include_seen=True, max_problems=None)
    assert list(scored.groups) == ["seen"] and len(scored.groups["seen"]) == 2


def test_max_problems_is_a_fixed_draw_in_benchmark_order():
    bench = load_humaneval()
    nothing = TrainingProblems(frozenset(), "none", ())
    chosen = [choose_problems(bench, nothing, include_seen=False, max_problems=5) for _ in "ab"]
    draws = [[p.task_id for p in scored.groups["unseen"]] for scored in chosen]
    assert draws[0] == draws[1] and len(set(draws[0])) == 5 and SAMPLE_SEED == 0
    order = [p.task_id for p in bench.problems]
    assert draws[0] == sorted(draws[0], key=order.index)
    assert draws[0] != order[:5]  # a draw, not the first five
