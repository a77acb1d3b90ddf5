"""The evaluator through the real sandbox: reference solutions pass, broken ones fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.eval.test_benchmarks import CODECONTESTS_ROWS, MBPP_ROWS, write_jsonl
from wmtp.eval.benchmarks import humaneval_canonical, load_codecontests, load_humaneval, load_mbpp
from wmtp.eval.evaluator import check_completions
from wmtp.eval.results import read_eval_dir, write_results
from wmtp.eval.table import print_table

TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/53", "HumanEval/101"]
CHECK = {"timeout_s": 3.0, "memory_mb": 512, "workers": 2, "progress": False}
BROKEN = {
    "raises": "    raise NotImplementedError\n",
    "exits early": "    import sys\n    sys.exit(0)\n",
    "loops": "    while True:\n        pass\n",
}


@pytest.fixture(scope="module")
def humaneval5():
    bench = load_humaneval()
    return type(bench)(
        bench.name, tuple(p for p in bench.problems if p.task_id in TASKS), bench.stop
    )


def test_canonical_solutions_pass_and_broken_ones_fail(humaneval5, tmp_path):
    canonical = humaneval_canonical(TASKS)
    completions = {
        task: [canonical[task], canonical[task], BROKEN["raises"], BROKEN["exits early"]]
        for task in TASKS
    }
    completions["HumanEval/53"][3] = BROKEN["loops"]
    verdicts = check_completions(humaneval5, completions, **CHECK)
    for task in TASKS:
        statuses = [v.status for v in verdicts[task]]
        assert statuses[:3] == ["passed", "passed", "failed"], (task, verdicts[task])
    assert verdicts["HumanEval/53"][3].status == "timeout"
    assert verdicts["HumanEval/0"][3].status == "failed"  # sys.exit(0) before the checks ran
    assert "NotImplementedError" in verdicts["HumanEval/2"][2].detail

    samples = {t: [{"completion": c} for c in cs] for t, cs in completions.items()}
    groups = {"unseen": TASKS[:3], "seen": TASKS[3:]}
    folder = tmp_path / "humaneval"
    info = {"benchmark": "humaneval", "model": "ref"}
    summary = write_results(folder, samples, verdicts, groups=groups, ks=[1, 2, 4], info=info)
    # every problem: n = 4, c = 2 -> pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1
    for group, problems in (("unseen", 3), ("seen", 2)):
        result = summary["results"][group]
        assert result["pass_at_k"] == pytest.approx({"1": 0.5, "2": 5 / 6, "4": 1.0})
        assert result["pass_at_k_stderr"] == pytest.approx({"1": 0, "2": 0, "4": 0})  # all equal
        assert result["problems"] == problems and result["samples_per_problem"] == 4
    assert summary["results"]["unseen"]["statuses"] == {"passed": 6, "failed": 6}
    assert summary["results"]["seen"]["statuses"] == {"passed": 4, "failed": 3, "timeout": 1}
    lines = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 20
    assert {(line["task_id"], line["sample"], line["seen"]) for line in lines} == {
        (t, i, t in TASKS[3:]) for t in TASKS for i in range(4)
    }
    problems = [json.loads(line) for line in (folder / "problems.jsonl").read_text().splitlines()]
    assert [(p["task_id"], p["passed"], p["seen"]) for p in problems] == [
        (t, 2, t in TASKS[3:]) for t in TASKS
    ]
    assert read_eval_dir(tmp_path)["humaneval"]["model"] == "ref"


def test_all_broken_scores_zero(humaneval5, tmp_path):
    completions = {task: [BROKEN["raises"], "    return None\n"] for task in TASKS}
    verdicts = check_completions(humaneval5, completions, **CHECK)
    assert all(v.status == "failed" for vs in verdicts.values() for v in vs)
    samples = {t: [{"completion": c} for c in cs] for t, cs in completions.items()}
    summary = write_results(
        tmp_path, samples, verdicts, groups={"unseen": TASKS}, ks=[1, 2], info={}
    )
    assert summary["results"]["unseen"]["pass_at_k"] == {"1": 0.0, "2": 0.0}
    assert set(summary["results"]) == {"unseen"}


def test_mbpp_and_codecontests_judges_run_programs(tmp_path):
    mbpp = load_mbpp(write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS))
    completions = {
        p.task_id: [row["code"], "def nothing():\n  pass\n"]
        for p, row in zip(mbpp.problems, MBPP_ROWS, strict=True)
    }
    verdicts = check_completions(mbpp, completions, **CHECK)
    assert [[v.status for v in vs] for vs in verdicts.values()] == [["passed", "failed"]] * 2

    contests = load_codecontests(write_jsonl(tmp_path / "cc.jsonl", CODECONTESTS_ROWS))
    (problem,) = contests.problems
    programs = [
        "a, b = map(int, input().split())\nprint(a + b)\n",
        "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nprint(a + b)\n",
        "a, b = map(int, input().split())\nprint(a - b)\n",  # right on "0 0" only
        "print(3)\n",  # right on the first test only
    ]
    verdicts = check_completions(contests, {problem.task_id: programs}, **CHECK)[problem.task_id]
    assert [v.status for v in verdicts] == ["passed", "passed", "failed", "failed"]
    assert verdicts[3].detail.startswith("test 2 of 3: expected '7")  # counted from 1


def test_a_codecontests_failure_names_its_test_counted_from_1(tmp_path):
    """Tests 1 2 -> 3, 5 5 -> 10, -1 1 -> 0: ``print(3)`` fails the second and crashing on a
    sum of 10 crashes there too; each detail names test 2 (of 3), as a traceback counts lines."""
    row = {
        "name": "sum",
        "description": "Print the sum of two integers.",
        "public_tests": {"input": ["1 2\n", "5 5\n", "-1 1\n"], "output": ["3\n", "10\n", "0\n"]},
    }
    contests = load_codecontests(write_jsonl(tmp_path / "cc.jsonl", [row]))
    programs = [
        "print(3)\n",
        "a, b = map(int, input().split())\nassert a + b != 10, 'ten'\nprint(a + b)\n",
        "a, b = map(int, input().split())\nprint(a + b)\n",
    ]
    verdicts = check_completions(contests, {"sum": programs}, **CHECK)["sum"]
    assert [v.status for v in verdicts] == ["failed", "failed", "passed"]
    assert verdicts[0].detail == "test 2 of 3: expected '10', got '3'"
    assert verdicts[1].detail.startswith("test 2 of 3: ")
    assert "AssertionError: ten" in verdicts[1].detail
    assert verdicts[2].detail == "3 tests"


def test_table_prints_every_k_with_its_standard_error_and_the_split(capsys):
    from rich.console import Console

    console = Console(width=200, force_terminal=False)
    result = {
        "pass_at_k": {"1": 0.25, "10": 0.5},
        "pass_at_k_stderr": {"1": 0.125, "10": None},
        "problems": 3,
        "samples_per_problem": 10,
        "statuses": {"passed": 4, "failed": 26},
    }
    summary = {
        "results": {"unseen": result},
        "split": {"unseen": 16, "seen": 148, "max_problems": 3, "sample_seed": 0},
        "training": {
            "split": "the built-in HumanEval split",
            "sources": [f"{Path.cwd()}/runs/x: baseline"],
        },
        "generation": {
            "speculative": {
                "acceptance_rate": 0.5,
                "acceptance_by_head": {"2": 0.75, "3": 0.25},
                "tokens_per_forward": 1.5,
            }
        },
        "sandbox": "bwrap: bubblewrap ...",
    }
    print_table({"humaneval": summary}, console)
    out = capsys.readouterr().out
    assert "pass@1" in out and "pass@10" in out and "25.00 ± 12.50" in out and "50.00 " in out
    assert "failed 26, passed 4" in out and "3 of 16 unseen" in out
    assert "16 problems unseen, 148 seen in training, from the built-in HumanEval split" in out
    assert "head 2 75.0%, head 3 25.0%" in out and "1.50 tokens per verify forward" in out
    # the summary's absolute path is shown from the working directory
    assert "trained on: runs/x: baseline" in out and "sandbox: bwrap: bubblewrap" in out


def test_a_sandbox_that_could_not_start_is_retried_but_a_verdict_never_is():
    from wmtp.eval.judges import SANDBOX_START_FAILURE, sandboxed
    from wmtp.sandbox import SandboxResult

    def results(*stderrs):
        queue = [SandboxResult("failed", "", e, 0.1, 1, "bwrap", started=False) for e in stderrs]
        calls = []

        def run(**kwargs):
            calls.append(kwargs)
            return queue.pop(0)

        return run, calls

    refused = f"{SANDBOX_START_FAILURE} for pid 1: Resource temporarily unavailable\n"
    run, calls = results(refused, refused, "AssertionError\n")
    assert sandboxed(run, program="x").stderr == "AssertionError\n" and len(calls) == 3
    run, calls = results("Traceback ... BlockingIOError: fork\n", "unused")
    assert sandboxed(run, program="x").stderr.startswith("Traceback") and len(calls) == 1


def test_a_program_that_writes_the_sandbox_start_failure_is_run_once():
    """The retry above is for a sandbox that never started the program: one that ran, failed and
    wrote bubblewrap's start failure itself is judged once (no second chance for a guesser)."""
    from wmtp import sandbox
    from wmtp.eval.judges import SANDBOX_START_FAILURE, sandboxed

    calls = []

    def run(**kwargs):
        calls.append(kwargs)
        return sandbox.execute(**kwargs)

    program = (
        f"import sys\nsys.stderr.write({SANDBOX_START_FAILURE + ' for pid 1'!r})\nsys.exit(1)\n"
    )
    result = sandboxed(run, program=program, timeout_s=10)
    assert result.stderr.startswith(SANDBOX_START_FAILURE) and result.status == "failed"
    assert result.started and len(calls) == 1


def test_problems_are_checked_while_later_ones_are_still_coming(humaneval5):
    """The evaluator hands each problem's samples to the checker as soon as they are generated:
    the first problem's programs finish in the sandbox before the second is submitted, and the
    verdicts equal judging everything at the end."""
    from concurrent.futures import wait

    from wmtp.eval.evaluator import Checker

    canonical = humaneval_canonical(TASKS)
    first, second = TASKS[0], TASKS[1]
    samples = {first: [canonical[first], BROKEN["raises"]], second: [canonical[second]]}
    limits = {k: v for k, v in CHECK.items() if k != "progress"}
    with Checker(humaneval5, **limits) as checker:
        checker.submit(first, samples[first])
        pending = wait(checker.futures[first], timeout=60).not_done
        assert not pending, "the first problem was not checked while the caller went on"
        checker.submit(second, samples[second])
        verdicts = checker.verdicts()
    assert [v.status for v in verdicts[first]] == ["passed", "failed"]
    at_the_end = check_completions(humaneval5, samples, **CHECK)

    def outcomes(by_task):  # durations, and a sandbox's own folder (rlimits), vary by run
        def detail(v):
            return re.sub(r"wmtp-sandbox-\w+", "wmtp-sandbox-X", v.detail)

        return {task: [(v.status, detail(v)) for v in vs] for task, vs in by_task.items()}

    assert outcomes(verdicts) == outcomes(at_the_end)


def test_checks_run_on_every_core_but_the_decoding_one_unless_the_recipe_says():
    import os

    from wmtp.eval.evaluator import check_workers
    from wmtp.recipe.specs.evaluation import EvaluationSpec

    cores = len(os.sched_getaffinity(0))
    assert check_workers(EvaluationSpec()) == max(1, cores - 1)
    assert check_workers(EvaluationSpec(workers=3)) == 3


def test_processes_of_one_machine_share_its_check_workers():
    import os

    from wmtp.eval.evaluator import check_workers
    from wmtp.recipe.specs.evaluation import EvaluationSpec

    cores = len(os.sched_getaffinity(0))
    assert check_workers(EvaluationSpec(), local_ranks=2) == max(1, (cores - 2) // 2)
    assert check_workers(EvaluationSpec(workers=8), local_ranks=4) == 2
    assert check_workers(EvaluationSpec(workers=3), local_ranks=8) == 1


def test_ranks_are_dealt_every_nth_problem_and_together_hold_each_once():
    from wmtp.eval.ranks import EvalRanks

    problems = [f"p{i}" for i in range(7)]
    shares = [EvalRanks(rank, 3).share(problems) for rank in range(3)]
    assert shares == [("p0", "p3", "p6"), ("p1", "p4"), ("p2", "p5")]
    assert EvalRanks().share(problems) == tuple(problems)
    assert EvalRanks(2, 8).share(problems[:2]) == ()  # more ranks than problems: nothing
    assert EvalRanks().gather("mine") == ["mine"]


def test_the_ranks_generation_figures_add_up_and_their_time_is_the_slowest():
    from wmtp.eval.completions import GenerationStats
    from wmtp.eval.generate import StepTally
    from wmtp.eval.speculative import SpeculativeStats

    def part(tokens, seconds, steps, busy):
        tally = StepTally(slots=4, steps=steps, busy_slot_steps=busy, rows_started=2)
        tally.seconds = seconds
        return GenerationStats(completions=2, tokens=tokens, seconds=seconds, steps=tally)

    merged = GenerationStats.merged([part(300, 2.0, 100, 350), part(100, 1.0, 50, 100)])
    figures = merged.as_dict()
    assert (figures["completions"], figures["tokens"], figures["seconds"]) == (4, 400, 2.0)
    assert figures["tokens_per_s"] == 200.0  # both ranks' tokens in the slowest rank's time
    assert (figures["ranks"], figures["seconds_by_rank"]) == (2, [2.0, 1.0])
    steps = figures["steps"]
    assert (steps["steps"], steps["rows_started"], steps["slots"]) == (150, 4, 4)
    assert steps["slot_occupancy"] == 0.75 and steps["ms_per_step"] == 20.0  # 3 s / 150 steps
    one = part(10, 1.0, 5, 5)
    assert GenerationStats.merged([one]) is one and "ranks" not in one.as_dict()

    drafted = [GenerationStats(speculative=SpeculativeStats()) for _ in range(2)]
    for stats, offered in zip(drafted, (4, 6), strict=True):
        stats.speculative.count(offered, offered - 1)
    speculative = GenerationStats.merged(drafted).speculative
    assert speculative.acceptance_rate == pytest.approx(8 / 10)


def test_identical_completions_of_a_problem_are_judged_once_and_share_its_verdict(humaneval5):
    """Greedy decoding's one text stands for every sample (and sampling repeats short ones):
    judged once, every copy has that verdict. A program whose verdict is a coin toss shows it:
    judged 24 times apart, its copies would disagree (all alike once in 2^23)."""
    canonical = humaneval_canonical(["HumanEval/0"])["HumanEval/0"]
    coin = "    import random\n    assert random.random() < 0.5\n" + canonical
    completions = {"HumanEval/0": [coin] * 24 + [canonical]}
    (verdicts,) = check_completions(humaneval5, completions, **CHECK).values()
    assert len(verdicts) == 25 and verdicts[-1].passed
    assert len({(v.status, v.detail) for v in verdicts[:24]}) == 1, verdicts[:24]
