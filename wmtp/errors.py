"""User-facing error types.

Library code raises these for anything a user can cause (a bad recipe, a checkpoint that does not
fit, malformed data). The CLI turns every ``WmtpError`` into a located message and its
``exit_code`` (2; 130 / 143 for a run stopped by SIGINT / SIGTERM); nothing else in the package
decides exit codes. Invariants of our own code stay ``assert``s.
"""

from __future__ import annotations

from collections.abc import Iterator


class WmtpError(Exception):
    """Base of every error a user can cause; rendered without a traceback, exit code 2."""

    exit_code: int = 2
    label: str = "error"
    """How the CLI introduces the message."""

    def render(self) -> str:
        """The message shown to the user (may span several lines)."""
        return str(self)

    def to_json(self) -> dict:
        """A machine-readable form for ``--format json``."""
        return {"error": type(self).__name__, "message": self.render()}


class RecipeError(WmtpError):
    """A recipe that cannot be loaded or validated (see ``wmtp.recipe.errors`` for details)."""


class CheckpointError(WmtpError):
    """A checkpoint that is missing, of an unknown format, or does not fit the model."""


class DataError(WmtpError):
    """A dataset file that is malformed or disagrees with its metadata."""


class RecipeDataError(DataError):
    """A data problem traced to the recipe key that decides it (``data.path``,
    ``tokenizer.path``, ``data.sampling.weights.easy``...), so that ``wmtp validate --data`` and
    ``wmtp run`` locate it where the recipe set that key
    (``wmtp.recipe.inputs.located_problem``)."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


class ComponentError(WmtpError):
    """An unknown component name, or a component that cannot be built."""


class RunError(WmtpError):
    """A training run that cannot start, resume or continue (NaN loss, refused resume, ...)."""


class LibraryFailure(RunError):
    """A failure of the machine or a library (out of memory, torch.compile) said as what to
    change, its trace kept in ``run.log``: no input of the user's, so a failed start keeps its
    run directory (``wmtp.train.runner``)."""


class ExportError(WmtpError):
    """An export that cannot be written as asked: the output folder exists, or the target format
    cannot hold the model (a value head in a Hugging Face Llama, adapters in Meta's layout)."""


class StorageError(WmtpError):
    """A write the file system refused: a folder not writable by this user, a read-only or full
    file system (``wmtp.folders.refused_write``); what was written before it is kept."""


class SandboxError(WmtpError):
    """Untrusted code that may not run here: no bubblewrap and no opt-in to rlimits only, or an
    unknown ``WMTP_SANDBOX`` / ``--sandbox`` value."""


class Interrupted(RunError):
    """A run stopped by a signal, after a clean step (and a checkpoint) or before its first step:
    exit 128 + the signal."""

    label = "stopped"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class StopSignal(BaseException):
    """A stop signal before a run's first step, raised where the build was. A BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` on the way (logging's own, a
    library's) swallows it; the runner says it as :class:`Interrupted`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def linked_exceptions(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then every exception it was raised from or while handling (``__cause__``,
    ``__context__``) and a distributed checkpoint's per-rank failures, each once: where a
    library's wrapper (torch.compile's, DCP's) keeps the failure a message should name."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        failures = getattr(current, "failures", None)  # DCP's CheckpointException
        if isinstance(failures, dict):  # rank -> its exception, or (exception, traceback)
            for failure in failures.values():
                failure = failure[0] if isinstance(failure, tuple) and failure else failure
                if isinstance(failure, BaseException):
                    todo.append(failure)


JSON_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
JSON_WORDS |= {list: "a list", dict: "an object", type(None): "null"}
"""Python's types as JSON says them: messages about a value in a JSON file a user wrote."""


def json_kinds(kinds: type | tuple[type, ...]) -> str:
    """``(str, int)`` -> ``a string or a whole number``."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(JSON_WORDS.get(k, k.__name__) for k in kinds)


def json_kind_of(value: object) -> str:
    """What ``value`` (parsed from JSON) is, in JSON's words."""
    return json_kinds(type(value))
