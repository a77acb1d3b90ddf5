"""``check`` and ``check_many``: labels come from running HumanEval-style tests in the sandbox."""

from __future__ import annotations

import pytest

from tests.sandbox.isolations import KINDS
from wmtp.sandbox import CheckJob, check, check_many

ADD_TEST = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
)


@pytest.mark.parametrize("kind", KINDS)
def test_check_labels_by_running_the_tests(kind):
    good = "def add(a, b):\n    return a + b\n"
    wrong = "def add(a, b):\n    return a - b\n"
    assert check(good, ADD_TEST, "add", isolation_kind=kind).status == "passed"
    failed = check(wrong, ADD_TEST, "add", isolation_kind=kind)
    assert failed.status == "failed" and "AssertionError" in failed.stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "raise SystemExit", "exit()"])
def test_exiting_early_counts_as_failed(kind, exit_call):
    solution = f"import os, sys\n\ndef add(a, b):\n    {exit_call}\n"
    result = check(solution, ADD_TEST, "add", isolation_kind=kind)
    assert result.status == "failed", result
    at_import = f"import os, sys\n\ndef add(a, b):\n    return a + b\n\n{exit_call}\n"
    assert check(at_import, ADD_TEST, "add", isolation_kind=kind).status == "failed"


@pytest.mark.parametrize("kind", KINDS)
def test_check_keeps_the_solutions_own_output(kind):
    solution = "def add(a, b):\n    print('hi')\n    return a + b\n"
    result = check(solution, ADD_TEST, "add", isolation_kind=kind)
    assert result.status == "passed" and result.stdout == "hi\nhi\n"


@pytest.mark.parametrize("kind", KINDS)
def test_check_many_keeps_order_and_labels(kind):
    good = "def add(a, b):\n    return a + b\n"
    jobs = [
        CheckJob(good, ADD_TEST, "add"),
        CheckJob("def add(a, b):\n    return 3\n", ADD_TEST, "add"),
        CheckJob("def add(a, b):\n    while True: pass\n", ADD_TEST, "add"),
        CheckJob(good, ADD_TEST, "add"),
    ]
    results = check_many(
        jobs, timeout_s=1.0, memory_mb=256, workers=2, progress=False, isolation_kind=kind
    )
    assert [r.status for r in results] == ["passed", "failed", "timeout", "passed"]
    assert {r.isolation for r in results} == {kind}
