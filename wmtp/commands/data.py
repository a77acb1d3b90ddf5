"""Data commands: ``wmtp data index PATH`` and ``wmtp data humaneval OUT_DIR``.

Torch-free: datasets, metadata and the sandbox need none.
"""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from wmtp.commands._common import Group, SandboxOption, choices, command, console

data_app = typer.Typer(
    name="data",
    cls=Group,
    help="Build dataset metadata and the built-in HumanEval dataset.",
    no_args_is_help=True,
)


class TokenizerKind(str, enum.Enum):
    """Which tokenizer counts the token lengths."""

    byte = "byte"
    sentencepiece = "sentencepiece"
    hf = "hf"


class Template(str, enum.Enum):
    """Prompt template the lengths are counted with."""

    alpaca = "alpaca"
    plain = "plain"


def register(app: typer.Typer) -> None:
    """Add ``wmtp data ...`` to ``app``."""
    command(data_app, "index", no_args_is_help=True)(index)
    command(data_app, "humaneval", no_args_is_help=True)(humaneval)
    app.add_typer(data_app, name="data")


def index(
    path: Annotated[
        Path,
        typer.Argument(
            help="A .jsonl file, or a dataset folder: its train.jsonl and, when there, its "
            "heldout.jsonl."
        ),
    ],
    tokenizer: Annotated[
        TokenizerKind,
        typer.Option(
            metavar=choices(TokenizerKind), help="Tokenizer that counts the token lengths."
        ),
    ] = TokenizerKind.byte,
    tokenizer_path: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="tokenizer.model / tokenizer.json (for sentencepiece / hf)."
        ),
    ] = None,
    template: Annotated[
        Template, typer.Option(metavar=choices(Template), help="Prompt template.")
    ] = Template.alpaca,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild metadata that exists (else it is checked).")
    ] = False,
) -> None:
    """Build <name>_metadata.json beside each JSONL where it is missing or out of date (the
    JSONL edited since); check it where it is (types, rows, every token length counted again)."""
    from wmtp.data.dataset import JsonlDataset
    from wmtp.data.jsonl import refuse_empty
    from wmtp.data.metadata import (
        built_from_another_version,
        index_jsonl,
        metadata_path_for,
        read_metadata,
    )
    from wmtp.data.tokenizers import load_tokenizer
    from wmtp.errors import DataError

    _check_tokenizer_options(tokenizer.value, tokenizer_path)
    files = _files_to_index(path)
    refuse_empty(files[0])  # the file named, or a folder's train.jsonl: before any is indexed
    empty = [f for f in files if f.is_file() and f.stat().st_size == 0]
    for file in empty:  # e.g. the heldout.jsonl of `wmtp data humaneval --heldout-fraction 0`
        console.print(f"{file}: empty, not indexed", highlight=False)
    files = [f for f in files if f not in empty]
    for file in files:  # a folder it cannot write in, said before any file is read
        meta_path = metadata_path_for(file)
        if meta_path.exists() and not meta_path.is_file():
            raise DataError(f"{meta_path}: not a file, where {file.name}'s metadata goes")
        if force or not meta_path.is_file():
            _refuse_unwritable_beside(file)
    tok = load_tokenizer(tokenizer.value, tokenizer_path)
    for file in files:
        meta_path = metadata_path_for(file)
        if meta_path.is_file() and not force:
            _refuse_other_counting(meta_path, tok.identity, template.value)
            ds = JsonlDataset(file, tok, template=template.value, progress=True)
            if not built_from_another_version(read_metadata(meta_path), ds.file):
                ds.check_recorded_lengths(progress=True)
                console.print(f"{meta_path}: agrees with {file.name} ({len(ds)} rows)")
                for note in ds.notes:
                    console.print(f"  note: {note}")
                continue
            console.print(f"{meta_path}: out of date ({file.name} was edited since); rebuilt")
            _refuse_unwritable_beside(file)
        start = time.monotonic()
        written = index_jsonl(file, tok, template.value, progress=True)
        meta = json.loads(written.read_text())
        console.print(
            f"{written}: {meta['n_rows']} rows, {len(meta['problem_index_map'])} problems "
            f"({time.monotonic() - start:.1f} s)"
        )


def _files_to_index(path: Path) -> list[Path]:
    """``path`` itself, or a dataset folder's ``train.jsonl`` and, when there, its
    ``heldout.jsonl``: the files a run reads from it (``data.path``, ``data.split.heldout_path``).
    Its other ``*.jsonl`` are named as not indexed; a DataError where ``path`` names no rows."""
    from wmtp.data.components import jsonl_train_file

    train = jsonl_train_file(path)  # a folder without train.jsonl, a metadata file: refused
    if train == path.expanduser():
        return [train]
    heldout = train.with_name("heldout.jsonl")
    files = [train, jsonl_train_file(heldout)] if heldout.exists() else [train]
    others = sorted(set(train.parent.glob("*.jsonl")) - set(files))
    if others:
        names = ", ".join(other.name for other in others)
        console.print(
            f"{train.parent}: not indexed: {names} (a dataset folder's rows are its train.jsonl "
            "and heldout.jsonl; give a file's path to index it)",
            highlight=False,
        )
    return files


def _refuse_other_counting(meta_path: Path, tokenizer: str, template: str) -> None:
    """Metadata counted by another tokenizer or template than this command's is neither
    checked ("agrees" would say nothing of these lengths) nor replaced without ``--force``."""
    from wmtp.data.metadata import read_metadata
    from wmtp.errors import DataError

    meta = read_metadata(meta_path)
    if (meta["tokenizer"], meta["template"]) != (tokenizer, template):
        raise DataError(
            f"{meta_path}: token lengths counted by tokenizer {meta['tokenizer']!r} and template "
            f"{meta['template']!r}, but this command counts with {tokenizer!r} and {template!r}: "
            "give the --tokenizer (and --tokenizer-path, --template) it was built with to check "
            "it, or --force to rebuild it for these"
        )


def _check_tokenizer_options(kind: str, path: Path | None) -> None:
    """``--tokenizer-path`` given where it is needed, and only there."""
    from wmtp.errors import RunError

    if kind == "byte" and path is not None:
        raise RunError(f"--tokenizer-path {path}: the byte tokenizer reads no file (leave it out)")
    if kind != "byte" and path is None:
        raise RunError(f"--tokenizer {kind} needs --tokenizer-path (its tokenizer file)")


def _refuse_unwritable_beside(file: Path) -> None:
    """A DataError when ``file``'s metadata cannot be written beside it."""
    from wmtp.errors import DataError
    from wmtp.folders import why_unwritable

    reason = why_unwritable(file.parent)
    if reason is not None:
        raise DataError(f"{file}: its metadata cannot be written beside it: {reason}")


def humaneval(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the dataset into.")],
    heldout_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=0.9, metavar="FRACTION", help="Fraction of problems held out."),
    ] = 0.1,
    workers: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Parallel sandboxed checks (default: one per core)."),
    ] = None,
    sandbox: SandboxOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace the files of an earlier build in OUT_DIR that were edited since "
            "(never files no build wrote).",
        ),
    ] = False,
) -> None:
    """Build HumanEval train/held-out JSONL with sandbox-labelled correct and incorrect solutions.

    An earlier build in OUT_DIR is rebuilt; one whose files were edited since is refused unless
    --force."""
    from wmtp.data.humaneval import build_humaneval, check_out_dir
    from wmtp.sandbox import choose, require

    check_out_dir(out_dir, force=force)  # before the sandbox is even looked for
    choose(sandbox)
    found = require(purpose=f"building the HumanEval dataset in {out_dir}")  # before any work
    console.print(f"sandbox: {found.kind}: {found.detail}", highlight=False)
    try:
        out = build_humaneval(
            out_dir, heldout_fraction=heldout_fraction, workers=workers, force=force
        )
    except KeyboardInterrupt:  # the queued checks were cancelled: it stops at once
        console.print("stopped: SIGINT before the build finished; run it again to build")
        raise typer.Exit(130) from None
    info = json.loads((out / "build_info.json").read_text())
    for split in ("train", "heldout"):
        s = info[split]
        console.print(
            f"{split}: {s['problems']} problems, {s['rows']} rows "
            f"({s['correct']} correct, {s['incorrect']} incorrect), "
            f"{s['unique_pairs']} unique correct/incorrect pairs, "
            f"{s['length_balanced_pairs']} length-balanced pairs",
            soft_wrap=True,  # one line per split, whatever the width (a log file's is 80)
        )
    console.print(f"built in {info['build_seconds']} s -> {out}", soft_wrap=True)
