"""The ``wmtp`` command line: assembles the commands of every area into one Typer app."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="wmtp",
    help="Weighted Multi-Token Prediction: train and evaluate code LLMs from TOML recipes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)

# One module per area; each defines register(app). Order is the order of `wmtp --help`.
COMMAND_MODULES = (
    "wmtp.commands.recipe",  # validate, diff, show, schema, list
    "wmtp.commands.run",  # run (train), with --resume and --nproc-per-node
    "wmtp.commands.data",  # data index, data humaneval
    "wmtp.commands.eval",  # eval, report
    "wmtp.commands.bench",  # bench attention, bench step
)

for _module in COMMAND_MODULES:
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as _exc:  # an area not written yet in this checkout
        if _exc.name != _module:
            raise


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
