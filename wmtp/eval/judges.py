"""How a completion is judged: function tests, stdin/stdout tests, or an exact final answer.

A judge is a small frozen dataclass (picklable, so a worker pool can take it) with
``judge(completion, *, timeout_s, memory_mb) -> Verdict``. Code runs only in
``wmtp.sandbox``; nothing generated is ever executed in this process.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Protocol

STATUSES = ("passed", "failed", "timeout", "memory")
"""Every verdict's status; the sandbox's statuses, shared by judges that run no code."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of judging one completion."""

    status: str
    """One of ``STATUSES``."""
    detail: str = ""
    """Why it failed (the tail of stderr, the first differing test, the answer found)."""
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Judge(Protocol):
    runs_code: ClassVar[bool]
    """Whether judging runs the completion (in the sandbox, which must then be usable)."""

    def judge(self, completion: str, *, timeout_s: float, memory_mb: int) -> Verdict: ...


def _tail(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


SANDBOX_START_FAILURE = "bwrap: Can't fork"
"""bubblewrap could not start the program: the sandbox's per-user process limit is shared by every
sandbox running at the same moment, so a busy neighbour can refuse this one its first fork."""
START_RETRIES = 3


def sandboxed(run, **kwargs):
    """``run(**kwargs)`` (a sandbox call), again when the sandbox itself could not start.

    Only the launcher's own failure is retried (the program never ran: bubblewrap reported no
    child), never a program's verdict, whatever the program wrote.
    """
    for attempt in range(START_RETRIES + 1):
        result = run(**kwargs)
        refused = not result.started and result.stderr.startswith(SANDBOX_START_FAILURE)
        if not refused or attempt == START_RETRIES:
            return result
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FunctionTests:
    """HumanEval-style: ``test`` defines ``check(candidate)``, called with ``entry_point``.

    The program is ``prefix + completion`` (HumanEval: the prompt holds the signature and
    docstring; the model writes the body).
    """

    prefix: str
    test: str
    entry_point: str
    runs_code: ClassVar[bool] = True

    def program(self, completion: str) -> str:
        return self.prefix + completion

    def judge(self, completion: str, *, timeout_s: float, memory_mb: int) -> Verdict:
        from wmtp import sandbox

        result = sandboxed(
            sandbox.check,
            solution=self.program(completion),
            test=self.test,
            entry_point=self.entry_point,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
        )
        detail = "" if result.status == "passed" else _tail(result.stderr or result.stdout)
        return Verdict(result.status, detail, result.duration_s)


def outputs_match(expected: str, actual: str) -> bool:
    """Judge's comparison: equal as whitespace-separated tokens (trailing spaces, newlines)."""
    return expected.split() == actual.split()


@dataclass(frozen=True)
class StdioTests:
    """CodeContests-style: the program reads each input on stdin and must print its output.

    Tests run one at a time, stopping at the first that does not pass; a failure names it
    counting from 1 (``test 2 of 3: ...``), as a traceback numbers lines.
    """

    prefix: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    runs_code: ClassVar[bool] = True

    def __post_init__(self) -> None:
        assert len(self.inputs) == len(self.outputs), (len(self.inputs), len(self.outputs))

    def judge(self, completion: str, *, timeout_s: float, memory_mb: int) -> Verdict:
        from wmtp import sandbox

        program = self.prefix + completion
        started = time.perf_counter()
        pairs = zip(self.inputs, self.outputs, strict=True)
        for number, (stdin, expected) in enumerate(pairs, start=1):
            result = sandboxed(
                sandbox.execute,
                program=program,
                stdin=stdin,
                timeout_s=timeout_s,
                memory_mb=memory_mb,
            )
            elapsed = time.perf_counter() - started
            which = f"test {number} of {len(self.inputs)}"
            if result.status != "passed":
                return Verdict(result.status, f"{which}: {_tail(result.stderr)}", elapsed)
            if not outputs_match(expected, result.stdout):
                got = f"expected {_tail(expected, 80)!r}, got {_tail(result.stdout, 80)!r}"
                return Verdict("failed", f"{which}: {got}", elapsed)
        return Verdict("passed", f"{len(self.inputs)} tests", time.perf_counter() - started)


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize_number(text: str) -> Fraction | None:
    """``"$1,234.50"`` -> Fraction(2469, 2); None when ``text`` is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_final_answer(completion: str) -> str | None:
    """The answer a completion commits to: after its first ``####``, else its last number."""
    if "####" in completion:
        after = completion.split("####", 1)[1].strip()
        found = _NUMBER.search(after)
        return found.group(0) if found else (after.split("\n", 1)[0].strip() or None)
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


@dataclass(frozen=True)
class ExactAnswer:
    """GSM8K-style: the completion's final number must equal the reference answer exactly."""

    answer: str
    runs_code: ClassVar[bool] = False

    def judge(self, completion: str, *, timeout_s: float, memory_mb: int) -> Verdict:
        found = extract_final_answer(completion)
        if found is None:
            return Verdict("failed", "no answer found")
        want, got = normalize_number(self.answer), normalize_number(found)
        same = (want == got) if want is not None and got is not None else found == self.answer
        return Verdict("passed" if same else "failed", f"answer {found!r}")


__all__ = [
    "STATUSES",
    "ExactAnswer",
    "FunctionTests",
    "Judge",
    "StdioTests",
    "Verdict",
    "extract_final_answer",
    "normalize_number",
    "outputs_match",
]
