"""The ``wmtp`` command line: assembles the commands of every area into one Typer app.

Each area's commands live in ``wmtp/commands/<area>.py``, which defines ``register(app)``.
``wmtp.cli.app`` holds every command (``wmtp --help``, tests through ``CliRunner``); the console
script imports only the module of the command it runs, so ``wmtp validate`` pays for neither the
other areas' modules nor what they import.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

COMMANDS: dict[str, tuple[str, ...]] = {
    "wmtp.commands.recipe": ("validate", "diff", "show", "schema", "list"),
    "wmtp.commands.run": ("run",),  # train, with --resume and --nproc-per-node
    "wmtp.commands.data": ("data",),  # data index, data humaneval
    "wmtp.commands.eval": ("eval", "report"),
    "wmtp.commands.export": ("export",),  # a trained model as hf, meta or wmtp files
    "wmtp.commands.bench": ("bench",),  # bench attention, bench step
}
"""Command module -> the top-level commands (or command groups) its ``register`` adds.
Order is the order of ``wmtp --help``; ``tests/commands/test_cli.py`` checks the names."""


def build_app(modules: Sequence[str] = tuple(COMMANDS)) -> typer.Typer:
    """A Typer app with the commands of ``modules`` (every area by default)."""
    import typer

    from wmtp.commands._common import Group

    app = typer.Typer(
        name="wmtp",
        cls=Group,  # --help without Typer's type names, as every command's
        help="Weighted Multi-Token Prediction: train and evaluate code LLMs from TOML recipes.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits it
        pretty_exceptions_show_locals=False,
        rich_markup_mode="rich",
    )
    app.callback()(_root_callback(typer))  # a group of commands, even of a single one
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not written yet in this checkout
            if exc.name != name:
                raise
            continue
        module.register(app)
    return app


def _root_callback(typer: Any) -> Any:
    """The options of ``wmtp`` itself, before a command: ``--version``."""

    def show_version(value: bool) -> None:
        if value:
            from wmtp import __version__

            print(f"wmtp {__version__}")
            raise typer.Exit()

    def root(
        version: bool = typer.Option(
            False, "--version", callback=show_version, is_eager=True, help="Print the version."
        ),
    ) -> None:
        pass

    return root


def module_of(argv: Sequence[str]) -> str | None:
    """The command module that owns the command ``argv`` runs; ``None`` when unclear
    (no command, an option first such as ``--help``, or an unknown name)."""
    if not argv or argv[0].startswith("-"):
        return None
    return next((m for m, names in COMMANDS.items() if argv[0] in names), None)


@functools.cache
def _full_app() -> typer.Typer:
    return build_app()


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use: importing wmtp.cli stays cheap
        return _full_app()
    raise AttributeError(f"module 'wmtp.cli' has no attribute {name!r}")


def main() -> None:
    """Console-script entry point: builds only the module of the command it runs
    (``wmtp validate`` first tries its Typer-free path, see ``wmtp.commands._validate``).
    A reader of stdout or stderr that goes away never stops the command (``wmtp.streams``)."""
    from wmtp.streams import outlive_readers

    outlive_readers()
    _wide_help_off_a_terminal(sys.argv[1:])
    try:
        if sys.argv[1:2] == ["validate"]:
            from wmtp.commands._validate import fast_main

            code = fast_main(sys.argv[2:])
            if code is not None:
                sys.exit(code)
        module = module_of(sys.argv[1:])
        app = build_app((module,)) if module else _full_app()
        app()
    finally:
        _done()


HELP_WIDTH = "200"
"""Columns of ``--help`` read through a pipe or in a file, where rich's default (80) cuts the
options' descriptions short with "…"."""


def _wide_help_off_a_terminal(argv: Sequence[str]) -> None:
    """``wmtp COMMAND --help | less`` (or into a file): help as wide as its longest line, so no
    description is cut; a terminal keeps its own width, and ``COLUMNS`` set by the user wins."""
    import os

    if ("--help" in argv or "-h" in argv) and not sys.stdout.isatty():
        os.environ.setdefault("COLUMNS", HELP_WIDTH)


def _done() -> None:
    """The command has ended and said how: a stop signal from here on (Ctrl-C while torch's
    exit handlers run) changes nothing, so it is ignored rather than ending the process with
    no message, or a traceback, and another exit code than the command's."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    main()
