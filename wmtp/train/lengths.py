"""The longest row a training micro-batch can have, from the recipe's data loaded as training does.

``wmtp validate --data`` sizes activation memory with it (``wmtp.estimate.estimate(row_tokens=)``)
instead of ``data.max_length``. The tokenizer and the data are assembled exactly as training
assembles them (``wmtp.assembly``). Importing this module and calling :func:`longest_row` need
no torch.

- Packed data (``data.packing = true``): rows are always ``max_length`` tokens (if any row is
  left to draw).
- Padded examples (``TrainData.batches`` -> ``collate.pad_batch``): a micro-batch is as long as
  its longest example, so the bound is the longest example an epoch can draw (correct solutions,
  as every pipeline but the critic trains on; under difficulty sampling, those of a bin of
  positive weight).
- Critic pairs (``TrainData.pair_batches`` -> ``collate.pair_batch``): chosen and rejected are
  padded to the longer of the two over the micro-batch's pairs, so the bound is the longest
  solution that can be in a pair (a problem with a correct and an incorrect solution in its
  length bin, as ``samplers.length_balanced_pairs`` pairs them).

Examples are encoded with the recipe's tokenizer and template and truncated at ``max_length`` as
training does (``TrainData.example_length``); padded lengths round up as training pads them
(``ParallelSpec.pad_multiple``: 256 tokens when blocks compile) and are capped at ``max_length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from wmtp.data import samplers
from wmtp.data.examples import padded_length
from wmtp.errors import DataError, RecipeDataError


@dataclass(frozen=True)
class LongestRow:
    """The row length that sizes activation memory, and where it comes from."""

    tokens: int
    """Tokens of the longest row a micro-batch can have (rounded, at most ``max_length``)."""
    source: Literal["data", "max_length"]
    """``data``: the longest example in the data; ``max_length``: packed rows."""
    of: str
    """What it is the longest of, for people ("771 correct training rows")."""
    notes: tuple[str, ...] = ()
    """What reading the data noted (no metadata: lengths counted, and the command that saves
    them), as a run logs it."""

    def to_json(self) -> dict[str, Any]:
        return {"row_tokens": self.tokens, "row_tokens_from": self.source}


def longest_row(recipe: Any) -> LongestRow:
    """The longest row of ``recipe``'s training micro-batches (see the module docstring).

    Raises :class:`RecipeDataError` naming the recipe key of a tokenizer or dataset that cannot
    be read, of a HumanEval dataset that is not built yet, or of data that leaves nothing to train.
    """
    spec = recipe.data
    unbuilt = _unbuilt_humaneval(spec)
    if unbuilt is not None:  # a fresh clone's recipe: valid, its data built by the first run
        return LongestRow(spec.max_length, "max_length", "rows of max_length", (unbuilt,))
    data = _train_data(recipe, _tokenizer(recipe))
    notes = tuple(data.train.notes + (data.heldout.notes if data.heldout else []))
    critic = recipe.pipeline.examples == "pairs"
    rows = pairable_rows(data) if critic else drawn_rows(data)
    if len(rows) == 0:
        raise _nothing_to_draw(data, spec, critic)
    if spec.packing:  # packed or not, training needs a row to draw
        return LongestRow(spec.max_length, "max_length", "packed rows of max_length", notes)
    longest = _longest_example(data, spec, rows)
    padded = padded_length(longest, _pad_multiple(recipe), spec.max_length)
    of = f"{len(rows):,} " + ("solutions that can pair" if critic else "correct training rows")
    return LongestRow(padded, "data", of, notes)


def _nothing_to_draw(data: Any, spec: Any, critic: bool) -> RecipeDataError:
    """No row (or pair) an epoch can draw: where ``wmtp run`` stops with "no training rows are
    left", with the data report that says why."""
    report = "; ".join(data.report())
    if critic and _has_pairs_across_bins(data):
        return RecipeDataError(
            "data.pairs.length_bins",
            f"no (correct, incorrect) pair of one problem in one length bin ({report})",
        )
    if critic:  # the data's doing, whatever the bins
        return RecipeDataError(
            _dataset_key(spec),
            f"no problem has both a correct and an incorrect training row to pair ({report})",
        )
    return RecipeDataError(
        _dataset_key(spec),
        f"no training rows are left: no correct training row to draw ({report})",
    )


def _longest_example(data: Any, spec: Any, rows: np.ndarray) -> int:
    """Tokens of the longest of ``rows`` as it trains; a row whose count disagrees with the
    metadata's (edited by hand, or out of date) is a problem of the dataset key."""
    try:
        return data.example_length(int(rows[np.argmax(data.train.rows.n_tokens[rows])]))
    except DataError as exc:
        raise RecipeDataError(_dataset_key(spec), exc.render()) from None


def _pad_multiple(recipe: Any) -> int:
    """Training's padding multiple (``ParallelSpec.pad_multiple``) on the device the recipe
    names; ``device = "auto"`` counts as CUDA, where the estimate matters (the larger bound)."""
    device = recipe.parallel.device
    return recipe.parallel.pad_multiple("cuda" if device == "auto" else device)


def drawn_rows(data: Any) -> np.ndarray:
    """Rows an epoch can draw for the pipelines that train on correct solutions
    (``TrainData.epoch_order``): under difficulty sampling, those of a bin of positive weight."""
    table = data.train.rows
    rows = data.train_rows[table.is_correct[data.train_rows]]
    sampler = data.sampler
    if isinstance(sampler, samplers.DifficultySampler):
        sampler.check_drawable(rows, table.difficulty)
        members, _ = samplers.difficulty_bins(rows, table.difficulty, sampler.bins)
        drawn = [m for name, m in members.items() if sampler.weights.get(name, 0) > 0]
        rows = np.concatenate([rows[:0], *drawn])
    return rows


def pairable_rows(data: Any) -> np.ndarray:
    """Training rows that some epoch's critic pairs can hold: those whose problem has a correct
    and an incorrect solution in their length bin (``samplers.length_balanced_pairs``)."""
    assert data.pairs is not None, "the critic pipeline needs data.pairs"
    table, rows = data.train.rows, data.train_rows
    edges = list(data.pairs.length_bins)
    bins = samplers.length_bin(table.n_tokens[rows], edges)
    group = table.problem_of_row[rows].astype(np.int64) * (len(edges) + 1) + bins
    correct = table.is_correct[rows]
    both = np.intersect1d(group[correct], group[~correct])
    return rows[np.isin(group, both)]


def _has_pairs_across_bins(data: Any) -> bool:
    """Whether some problem has a correct and an incorrect training row, in any length bins."""
    table, rows = data.train.rows, data.train_rows
    problems = table.problem_of_row[rows]
    correct = table.is_correct[rows]
    return np.intersect1d(problems[correct], problems[~correct]).size > 0


def _tokenizer(recipe: Any) -> Any:
    """The tokenizer training builds (``wmtp.assembly.tokenizer``)."""
    from wmtp import assembly

    try:
        return assembly.tokenizer(recipe)
    except DataError as exc:
        raise RecipeDataError("tokenizer.path", exc.render()) from None


def _dataset_key(spec: Any) -> str:
    return "data.path" if spec.kind == "jsonl" else "data.cache_dir"


def _train_data(recipe: Any, tokenizer: Any) -> Any:
    """``TrainData`` as training loads it (``wmtp.assembly.dataset``); HumanEval only when built."""
    from wmtp import assembly

    spec = recipe.data
    unbuilt = _unbuilt_humaneval(spec)
    if unbuilt is not None:
        raise RecipeDataError("data.cache_dir", unbuilt)
    try:
        return assembly.dataset(recipe, tokenizer, progress=False)
    except RecipeDataError:
        raise
    except DataError as exc:
        raise RecipeDataError(_dataset_key(spec), exc.render()) from None


def _unbuilt_humaneval(spec: Any) -> str | None:
    """Why the recipe's HumanEval dataset cannot be read here: not built yet (minutes of
    sandboxed runs, never started by a check), with the command that builds it; None when it
    is built, or the data is another kind."""
    from wmtp.data import humaneval

    if spec.kind != "humaneval":
        return None
    built = humaneval.built_dir(spec.cache_dir, spec.split.heldout_fraction)
    if humaneval.is_built(built):
        return None
    return (
        f"the HumanEval dataset for data.split.heldout_fraction = "
        f"{spec.split.heldout_fraction:g} is not built in {built}, so its rows were not read "
        f"(memory sized by data.max_length): the first `wmtp run` of this recipe builds it, or "
        f"`{humaneval.build_command(built, spec.split.heldout_fraction)}` now "
        "(about 80 s on two cores)"
    )
