"""What every command shares: consoles, and the boundary that turns errors into exit codes."""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from wmtp.commands import _output
from wmtp.commands._output import report_error
from wmtp.errors import Interrupted, WmtpError
from wmtp.stopping import signals_interrupt


def choices(values: type[enum.Enum]) -> str:
    """The metavar of an option that takes one of ``values``: ``[bwrap|rlimits]``."""
    return "[" + "|".join(str(v.value) for v in values) + "]"


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a recipe value: dotted.key=VALUE (read as TOML; a bare word is a string). "
        "Repeatable; wins over the recipe and what it extends.",
    ),
]
"""The ``--set`` option of every command that reads a recipe."""


class SandboxMode(str, enum.Enum):
    """The values of ``--sandbox`` (``wmtp.sandbox.MODES``; spelled out so that parsing a
    command line never imports the sandbox)."""

    bwrap = "bwrap"
    rlimits = "rlimits"


SandboxOption = Annotated[
    SandboxMode | None,
    typer.Option(
        "--sandbox",
        metavar=choices(SandboxMode),
        help="How untrusted code is isolated: bwrap (bubblewrap, the default; an error where "
        "it cannot run) or rlimits (resource limits only: no network or file isolation). Sets "
        "WMTP_SANDBOX for this process and its children.",
        show_default=False,
    ),
]
"""The ``--sandbox`` option of every command that runs untrusted code; the command applies it
first, with ``wmtp.sandbox.choose(sandbox)``."""


NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc-per-node",
        min=1,
        metavar="N",
        help="Processes on this machine (> 1 launches torchrun).",
    ),
]
"""The ``--nproc-per-node`` option of the commands that run on several processes."""


def torchrun_command(
    argv: list[str], nproc: int, subcommand: tuple[str, ...] = ("run",)
) -> list[str]:
    """The torchrun command line that re-runs ``wmtp SUBCOMMAND`` with ``argv`` (less
    ``--nproc-per-node``) on ``nproc`` processes."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        rest.append(arg)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "wmtp.cli",
        *subcommand,
        *rest,
    ]


def relaunch(subcommand: tuple[str, ...], nproc: int) -> NoReturn:
    """Run this command line again as ``nproc`` torchrun workers (``wmtp.train.launcher``: one
    message per failure, no orphans) and exit with the launcher's code."""
    from wmtp.train.launcher import Launch

    last = subcommand[-1]
    argv = sys.argv[sys.argv.index(last) + 1 :] if last in sys.argv else []
    cmd = torchrun_command(argv, nproc, subcommand)
    launch = Launch(cmd, world_size=nproc)  # its settings checked before anything starts
    _output.console().print(f"launching: {' '.join(cmd)}", highlight=False)
    raise typer.Exit(launch.run())


def __getattr__(name: str) -> Any:
    """``console`` (stdout) and ``err_console`` (stderr): rich consoles, made on first use so
    that commands printing plain text never import rich."""
    if name in ("console", "err_console"):
        return _output.console(stderr=name == "err_console")
    raise AttributeError(f"module 'wmtp.commands._common' has no attribute {name!r}")


class _PlainHelp:
    """``--help`` without Typer's type names (Typer 0.29 writes ``<bool>``, ``<list[str]>``,
    ``<path>``): a flag (ours, ``--help``, ``--install-completion``) shows no type, an argument
    its upper-case name (``RECIPE``, as ``Usage:`` does) and no type beside it. An option that
    takes a value shows the metavar its declaration gives: ``metavar="N"``, ``"DIR"``,
    ``choices(SomeEnum)``. ``tests/commands/test_help_rendering.py`` holds every command to it."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                if param.metavar is None:
                    param.metavar = ""  # takes no value: nothing to show
            elif param.param_type_name == "argument":
                _untyped_argument(param)
        return params


def _untyped_argument(param: Any) -> None:
    """An argument shown by its upper-case name, without the ``<path>`` Typer 0.27 and later
    add beside it: 0.29 from ``display_type_rich``, 0.27 and 0.28 from its type's metavar
    (Click's own rendering, up to Typer 0.26, shows ``RECIPE  PATH``)."""
    if param.metavar is None:
        param.metavar = param.name.upper()
        if param.nargs != 1:  # the metavar, Typer 0.26 to 0.28's usage line, loses its "..."
            param.get_usage_pieces = functools.partial(_variadic_usage, param.get_usage_pieces)
    param.display_type_rich = _no_type
    kind = getattr(param, "type", None)  # Typer 0.29's arguments convert values by annotation
    if kind is not None and not getattr(kind, "untyped", False):
        param.type = copy.copy(kind)  # converts values as before
        param.type.get_metavar = _no_metavar
        param.type.untyped = True


def _variadic_usage(usage_pieces: Callable[[Any], list[str]], ctx: Any) -> list[str]:
    """A variadic argument in ``Usage:``, ``RUNS...`` (``{RUNS}...``, ``[RECIPES]...``) as Typer
    writes one without a metavar."""
    return [piece if piece.endswith("...") else piece + "..." for piece in usage_pieces(ctx)]


def _no_type(ctx: Any) -> None:
    """An argument's type in ``--help`` (Typer 0.29): none, its name says what it is."""
    return None


def _no_metavar(*args: Any, **kwargs: Any) -> str:
    """An argument's type's metavar (Typer 0.27, 0.28): empty, shown as nothing."""
    return ""


class Command(_PlainHelp, TyperCommand):
    """Every ``wmtp`` command (``command()`` gives it)."""


class Group(_PlainHelp, TyperGroup):
    """``wmtp`` and its groups of commands (``typer.Typer(cls=Group)``)."""


def command(app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable:
    """Register a Typer command whose ``WmtpError``s, and writes the file system refused
    (``wmtp.folders.refused_write``), become a message and their exit code (2).

    The wrapped function may take a ``format`` parameter; when it is ``"json"`` the error is
    printed as JSON. Bugs (any other exception) keep their traceback. Its class is
    :class:`Command`, or ``cls=`` a subclass of it.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            _output.console_log()  # a library's warning reads as one
            try:
                with signals_interrupt():  # SIGTERM too: said, every clean-up run
                    return fn(*args, **kw)
            except WmtpError as exc:
                _leave_it_to_the_launcher(exc)
                report_error(exc, fmt=str(kw.get("format", "text")))
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt as exc:  # where no handler of the command's says what it keeps
                signum = getattr(exc, "signum", signal.SIGINT)
                name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
                stop = Interrupted(name, signum)
                report_error(stop, fmt=str(kw.get("format", "text")))
                raise typer.Exit(stop.exit_code) from None
            except Exception as exc:  # a write the file system refused is no bug of ours
                from wmtp.folders import refused_write

                refusal = refused_write(exc)
                if refusal is None:
                    raise
                report_error(refusal, fmt=str(kw.get("format", "text")))
                raise typer.Exit(refusal.exit_code) from None

        kwargs.setdefault("short_help", first_paragraph(fn.__doc__))
        kwargs.setdefault("help", flowed(fn.__doc__))
        kwargs.setdefault("cls", Command)
        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


def _leave_it_to_the_launcher(exc: WmtpError) -> None:
    """A rank that ``--nproc-per-node`` started (``wmtp.train.launcher``), failing on a user's
    error before its command's own handling (a device check, say): its record for the launcher,
    which says it once with its exit code, instead of a message from every rank."""
    from wmtp.train.run_log import FAILURES_ENV, exit_without_peers

    if FAILURES_ENV in os.environ and "RANK" in os.environ:
        exit_without_peers(exc, int(os.environ["RANK"]))


def first_paragraph(doc: str | None) -> str | None:
    """A docstring's first paragraph on one line: a command list's entry (Typer's rich help
    would keep the docstring's line breaks there)."""
    if not doc:
        return None
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def flowed(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line, so ``--help`` wraps it to the terminal
    (Typer's rich help keeps a docstring's line breaks: at 80 columns, a sentence broke mid-way).
    Lines that start a list item or are indented keep their own line."""
    if not doc:
        return None
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            starts_item = line.startswith(("- ", "* ", " "))
            if lines and not starts_item:
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)
