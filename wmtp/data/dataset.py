"""A JSONL dataset ready to train on: validated rows, token lengths, split, order and batches.

:class:`JsonlDataset` is one file with its checked metadata. :class:`TrainData` is what a
pipeline gets from the ``[data]`` section: the training rows after the split, ``n_samples`` and the
length rule, each epoch's order (or critic pairs) for one rank, and batches in the contract's
format. Whatever is left out is counted in :meth:`TrainData.report`, never dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmtp.data import samplers
from wmtp.data.examples import Encoded, Example, TemplateName, encode_example, fit_to_length
from wmtp.data.jsonl import JsonlFile, refuse_empty
from wmtp.data.metadata import (
    RowTable,
    built_from_another_version,
    check_metadata,
    index_command,
    lengths_from_metadata,
    metadata_path_for,
    read_metadata,
    scan_rows,
)
from wmtp.data.tokenizers import Tokenizer
from wmtp.errors import DataError, RecipeDataError

log = logging.getLogger(__name__)


class JsonlDataset:
    """One JSONL file, validated against its metadata, with every row's token length."""

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        *,
        template: TemplateName = "alpaca",
        max_length: int | None = None,
        truncate: bool = False,
        progress: bool = False,
    ):
        self.file = JsonlFile(path)
        self.tokenizer, self.template = tokenizer, template
        self.max_length, self.truncate = max_length, truncate
        self.notes: list[str] = []
        self.lengths_from: Path | None = None
        """The metadata file whose token lengths ``rows.n_tokens`` holds (None: computed here)."""
        self.rows = self._load_rows(progress)
        self.fits = self._rows_that_fit()

    def _load_rows(self, progress: bool) -> RowTable:
        meta_path = metadata_path_for(self.file.path)
        meta = self._usable_metadata(meta_path)
        same_lengths = meta is not None and (meta["tokenizer"], meta["template"]) == (
            self.tokenizer.identity,
            self.template,
        )
        tokenizer = None if same_lengths else self.tokenizer
        rows = scan_rows(self.file, tokenizer, self.template, progress=progress)
        if meta is not None:
            check_metadata(meta, rows, self.file, meta_path)
            if same_lengths:
                rows.n_tokens = lengths_from_metadata(meta, len(rows))
                self.lengths_from = meta_path
            else:
                self.notes.append(
                    f"{meta_path.name} has token lengths for tokenizer {meta['tokenizer']!r} and "
                    f"template {meta['template']!r}; recomputed for {self.tokenizer.identity!r} "
                    f"and {self.template!r} (`{self._index_command(force=True)}` saves them)"
                )
        return rows

    def _usable_metadata(self, meta_path: Path) -> dict | None:
        """The metadata beside the file; None, said in a note, where there is none or it was
        built from another version of the file (edited since: its lengths are recomputed)."""
        if not meta_path.is_file():
            self.notes.append(
                f"{self.file.path.name}: no {meta_path.name}; token lengths computed "
                f"(`{self._index_command()}` saves them)"
            )
            return None
        meta = read_metadata(meta_path)
        if built_from_another_version(meta, self.file):
            self.notes.append(
                f"{meta_path.name} was built from another version of {self.file.path.name} "
                f"(edited since): token lengths recomputed (`{self._index_command(force=True)}` "
                "saves them)"
            )
            return None
        return meta

    def _rows_that_fit(self) -> np.ndarray:
        """Mask of rows that make a training example under ``max_length`` and ``truncate``."""
        assert self.rows.n_tokens is not None
        fits = np.ones(len(self.rows), dtype=bool)
        if self.max_length is None:
            return fits
        too_long = np.flatnonzero(self.rows.n_tokens > self.max_length)
        for i in too_long:  # with truncation, only rows whose prompt fills the budget drop out
            fits[i] = self.truncate and self.encode(int(i)) is not None
        return fits

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def problem_ids(self) -> list[str]:
        return self.rows.problem_ids

    def rows_of(self, problems: set[str]) -> np.ndarray:
        """Indices of the rows of ``problems``."""
        codes = [i for i, p in enumerate(self.rows.problem_ids) if p in problems]
        return np.flatnonzero(np.isin(self.rows.problem_of_row, codes))

    def example(self, index: int) -> Example:
        return self.file.example(index)

    def encode(self, index: int) -> Encoded | None:
        """Row ``index`` as tokens (``None`` when it does not fit ``max_length``). Its length must
        be the one the metadata recorded, which decided whether it fits: a located
        :class:`DataError` otherwise (a row edited after ``wmtp data index``)."""
        encoded = encode_example(self.example(index), self.tokenizer, template=self.template)
        assert encoded is not None and self.rows.n_tokens is not None
        if len(encoded) != int(self.rows.n_tokens[index]):
            raise self._out_of_date(index, len(encoded))
        return fit_to_length(encoded, self.max_length, self.truncate)

    def check_recorded_lengths(self, *, progress: bool = False) -> None:
        """Every token length read from the metadata counted again (``wmtp data index``'s
        check): a located :class:`DataError` at the first row whose count differs."""
        if self.lengths_from is None:
            return
        counted = scan_rows(self.file, self.tokenizer, self.template, progress=progress).n_tokens
        assert counted is not None and self.rows.n_tokens is not None
        differ = np.flatnonzero(counted != self.rows.n_tokens)
        if len(differ):
            raise self._out_of_date(int(differ[0]), int(counted[differ[0]]))

    def _out_of_date(self, index: int, counted: int) -> DataError:
        assert self.rows.n_tokens is not None
        return DataError(
            f"{self.file.where(index)}: {counted} tokens, but {self.lengths_from} "
            f"records {int(self.rows.n_tokens[index])}: the metadata is out of date "
            f"(`{self._index_command(force=True)}` rebuilds it)"
        )

    def _index_command(self, *, force: bool = False) -> str:
        return index_command(self.file.path, self.tokenizer, self.template, force=force)


@dataclass
class TrainData:
    """The ``[data]`` section made concrete: which rows train, in what order, in what batches."""

    train: JsonlDataset
    train_rows: np.ndarray
    """Rows that train (after split, length rule and ``n_samples``), correct and incorrect."""
    heldout: JsonlDataset | None
    heldout_rows: np.ndarray
    seed: int
    sampler: Any = None
    """Orders the rows of an epoch (``samplers.UniformSampler`` when None)."""
    pairs: Any = None
    """The pairs section, for the critic."""
    packing: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    """What was left out, by reason (reported, never silent)."""
    _lengths: dict[int, int] = field(default_factory=dict, repr=False)
    """``example_length`` of the rows asked so far."""
    train_problems: frozenset[str] = frozenset()
    """Problems of the training split, before the length rule and ``n_samples`` drop rows: what
    an evaluation must count as seen (``wmtp.eval.splits``)."""
    pad_multiple: int = 1
    """Padded batches round their length up to this multiple (never past ``max_length``): the
    trainer sets ``ParallelSpec.pad_multiple``, so compiled blocks see a few fixed shapes."""
    truncated: int = 0
    """Training rows that train cut to ``max_length`` (``data.truncate``): kept, and reported."""

    @property
    def tokenizer(self) -> Tokenizer:
        return self.train.tokenizer

    def files(self) -> dict[str, str]:
        """Each file this data reads (absolute path) and its sha256: a checkpoint records them,
        so that a resume tells data edited since (``wmtp.train.runner``)."""
        files = [self.train.file] + ([self.heldout.file] if self.heldout is not None else [])
        return {str(f.path.resolve()): f.sha256 for f in files}

    @property
    def heldout_problems(self) -> list[str]:
        source = self.heldout or self.train
        codes = np.unique(source.rows.problem_of_row[self.heldout_rows])
        return sorted(source.rows.problem_ids[c] for c in codes)

    def report(self) -> list[str]:
        """Lines for the run log: sizes, what was left out and why, notes on metadata."""
        lines = [
            f"data: {_count(len(self.train_rows), 'training row')} "
            f"({int(self.train.rows.is_correct[self.train_rows].sum())} correct), "
            f"{_count(len(self.heldout_rows), 'held-out row')} of "
            f"{_count(len(self.heldout_problems), 'problem')}"
        ]
        lines += [
            f"data: left out {_count(n, 'row')}: {why}" for why, n in self.counts.items() if n
        ]
        if self.truncated:
            lines.append(
                f"data: {_count(self.truncated, 'training row')} cut to "
                f"max_length={self.train.max_length} (data.truncate)"
            )
        notes = self.train.notes + (self.heldout.notes if self.heldout else [])
        return lines + [f"data: {note}" for note in notes]

    def epoch_order(
        self, epoch: int, *, rank: int = 0, world_size: int = 1, correct_only: bool = True
    ) -> np.ndarray:
        """This rank's rows for ``epoch`` (correct solutions only unless told otherwise)."""
        rows = self.train_rows
        if correct_only:
            rows = rows[self.train.rows.is_correct[rows]]
        sampler = self.sampler or samplers.UniformSampler()
        order = sampler.order(rows, self.train.rows.difficulty, self.seed, epoch)
        return samplers.shard(order, rank, world_size)

    def epoch_pairs(self, epoch: int, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's (correct, incorrect) row pairs ``[P, 2]`` for ``epoch``."""
        if self.pairs is None:
            raise DataError("data.pairs is not set: the critic pipeline needs it")
        rows = self.train.rows
        pairs = samplers.length_balanced_pairs(
            self.train_rows,
            rows.problem_of_row,
            rows.is_correct,
            rows.n_tokens,
            length_bins=list(self.pairs.length_bins),
            max_pairs_per_problem=self.pairs.max_pairs_per_problem,
            unique=self.pairs.unique,
            seed=self.seed,
            epoch=epoch,
        )
        return samplers.shard(pairs, rank, world_size)

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[dict]:
        """Batches of ``batch_size`` rows of ``order`` (the last may be smaller), padded or packed."""
        from wmtp.data.collate import pack_batch, pack_rows, pad_batch

        pad_id = self.tokenizer.pad_id
        for start in range(0, len(order), batch_size):
            examples = [self._encoded(int(i)) for i in order[start : start + batch_size]]
            if self.packing:
                row_length = self.train.max_length or max(len(e) for e in examples)
                yield pack_batch(pack_rows(examples, row_length), pad_id, row_length)
            else:
                yield pad_batch(examples, pad_id, **self._padding())

    def pair_batches(self, pairs: np.ndarray, batch_size: int) -> Iterator[dict]:
        """Critic batches ``{"chosen": ..., "rejected": ...}`` of ``batch_size`` pairs."""
        from wmtp.data.collate import pair_batch

        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            yield pair_batch(
                [(self._encoded(int(c)), self._encoded(int(r))) for c, r in chunk],
                self.tokenizer.pad_id,
                **self._padding(),
            )

    def _padding(self) -> dict[str, int | None]:
        return {"multiple_of": self.pad_multiple, "max_length": self.train.max_length}

    def heldout_batches(self, batch_size: int) -> Iterator[dict]:
        """The held-out rows (correct ones), padded, in file order."""
        source = self.heldout or self.train
        rows = self.heldout_rows[source.rows.is_correct[self.heldout_rows]]
        view = TrainData(source, rows, None, rows[:0], self.seed, pad_multiple=self.pad_multiple)
        yield from view.batches(rows, batch_size)

    def example_length(self, index: int) -> int:
        """Tokens of training row ``index`` as it trains (template, special tokens, truncation)."""
        if index not in self._lengths:
            self._lengths[index] = len(self._encoded(index))
        return self._lengths[index]

    def packed_batch(self, rows: list[np.ndarray]) -> dict:
        """One packed batch of ``max_length`` tokens per row from rows of training-row indices."""
        from wmtp.data.collate import pack_batch

        assert self.train.max_length, "packing by rows needs data.max_length"
        examples = [[self._encoded(int(i)) for i in row] for row in rows]
        return pack_batch(examples, self.tokenizer.pad_id, self.train.max_length)

    def _encoded(self, index: int) -> Encoded:
        encoded = self.train.encode(index)
        assert encoded is not None, f"row {index} was kept but does not fit"
        return encoded


def _unread_heldout_note(unused: Path, train_name: str, fraction: float) -> str:
    """The run log's note on a dataset folder's heldout.jsonl the recipe's split leaves unread."""
    held = (
        f"the held-out problems are {fraction:g} of {train_name}'s (data.split.heldout_fraction)"
        if fraction > 0
        else "the recipe holds out no problem (data.split.heldout_fraction = 0)"
    )
    return (
        f"{unused} is not read: {held}; to hold out that file's problems instead, set "
        f"data.split = {{ heldout_path = '{unused}', heldout_fraction = 0 }}"
    )


def make_train_data(
    path: str | Path,
    tokenizer: Tokenizer,
    *,
    seed: int,
    template: TemplateName = "alpaca",
    max_length: int | None = None,
    truncate: bool = False,
    heldout_fraction: float = 0.0,
    heldout_path: str | Path | None = None,
    n_samples: int | None = None,
    sampler: Any = None,
    pairs: Any = None,
    packing: bool = False,
    progress: bool = False,
) -> TrainData:
    """Load ``path`` (and ``heldout_path``) and decide the training rows, counting what is left out."""
    kw = dict(template=template, max_length=max_length, truncate=truncate, progress=progress)
    refuse_empty(path)  # said as such, not as "no training rows are left" later
    train = JsonlDataset(path, tokenizer, **kw)
    counts: dict[str, int] = {}
    if heldout_path is not None:
        heldout = _heldout_dataset(heldout_path, tokenizer, train, kw)
        rows, heldout_rows = np.arange(len(train)), np.arange(len(heldout))
        train_ids = set(train.problem_ids)
    else:
        heldout = None
        train_ids, heldout_ids = samplers.split_problems(train.problem_ids, heldout_fraction, seed)
        unused = Path(path).with_name("heldout.jsonl")
        if unused.is_file():
            train.notes.append(_unread_heldout_note(unused, Path(path).name, heldout_fraction))
        rows, heldout_rows = train.rows_of(train_ids), train.rows_of(heldout_ids)
    source = heldout or train
    too_long = (
        f"prompt fills max_length={max_length} (nothing left to learn)"
        if truncate
        else f"longer than max_length={max_length} (data.truncate = true keeps them cut)"
    )
    counts[too_long] = int((~train.fits[rows]).sum())
    counts[f"held-out, {too_long}"] = int((~source.fits[heldout_rows]).sum())
    heldout_rows = heldout_rows[source.fits[heldout_rows]]
    rows = rows[train.fits[rows]]
    kept = samplers.subsample(rows, n_samples, seed)
    counts[f"beyond n_samples={n_samples}"] = len(rows) - len(kept)
    if sampler is not None:
        counts.update(sampler.left_out(kept, train.rows.difficulty))
    data = TrainData(train, kept, heldout, heldout_rows, seed, sampler, pairs, packing, counts)
    data.train_problems = frozenset(train_ids)
    if truncate and max_length is not None:
        data.truncated = int((train.rows.n_tokens[kept] > max_length).sum())
    for line in data.report():
        log.info(line)
    return data


def _heldout_dataset(
    path: str | Path, tokenizer: Tokenizer, train: JsonlDataset, kw: dict
) -> JsonlDataset:
    """The held-out file, sharing no problem with ``train``; a problem of it is located at
    ``data.split.heldout_path``, the recipe key that names it."""
    try:
        heldout = JsonlDataset(path, tokenizer, **kw)
        _refuse_shared_problems(train, heldout)
    except DataError as exc:
        raise RecipeDataError("data.split.heldout_path", exc.render()) from None
    return heldout


def _refuse_shared_problems(train: JsonlDataset, heldout: JsonlDataset) -> None:
    shared = set(train.problem_ids) & set(heldout.problem_ids)
    if shared:
        example = sorted(shared)[0]
        first = int(heldout.rows_of({example})[0])
        raise DataError(
            f"{heldout.file.where(first)}: problem {example!r} is also in {train.file.path} "
            f"({len(shared)} shared problems): held-out problems must not train"
        )


def _count(n: int, thing: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"1 {thing}" if n == 1 else f"{n} {thing}s"
