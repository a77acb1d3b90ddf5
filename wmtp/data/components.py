"""Register the data components: tokenizers, datasets and samplers, each built from its section.

Dataset builders take their ``[data]`` section plus what they cannot know from it: the
tokenizer (from ``[tokenizer]``) and the experiment seed. Importing this module needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wmtp.data.tokenizers import Tokenizer, load_tokenizer
from wmtp.errors import DataError, RecipeDataError
from wmtp.recipe.specs.data import (
    DifficultySamplingSpec,
    HumanEvalDataSpec,
    JsonlDataSpec,
    UniformSamplingSpec,
)
from wmtp.recipe.specs.experiment import (
    ByteTokenizerSpec,
    HFTokenizerSpec,
    SentencePieceTokenizerSpec,
)
from wmtp.registry import get, register

if TYPE_CHECKING:  # numpy's import (~0.1 s) waits for a builder that runs
    from wmtp.data.dataset import TrainData
    from wmtp.data.samplers import DifficultySampler, UniformSampler

# --------------------------------------------------------------------------- tokenizers


@register("tokenizer", "byte", spec=ByteTokenizerSpec)
def build_byte_tokenizer(spec: ByteTokenizerSpec) -> Tokenizer:
    """UTF-8 bytes plus BOS/EOS/PAD: no file needed; for tiny recipes and tests."""
    return load_tokenizer("byte")


@register("tokenizer", "sentencepiece", spec=SentencePieceTokenizerSpec)
def build_sentencepiece_tokenizer(spec: SentencePieceTokenizerSpec) -> Tokenizer:
    """A SentencePiece ``tokenizer.model`` (Llama-2, Meta's MTP checkpoints)."""
    return load_tokenizer("sentencepiece", spec.path)


@register("tokenizer", "hf", spec=HFTokenizerSpec)
def build_hf_tokenizer(spec: HFTokenizerSpec) -> Tokenizer:
    """A Hugging Face ``tokenizer.json``."""
    return load_tokenizer("hf", spec.path)


# --------------------------------------------------------------------------- samplers


@register("sampler", "uniform", spec=UniformSamplingSpec)
def build_uniform_sampler(spec: UniformSamplingSpec) -> UniformSampler:
    """Every training row once per epoch, shuffled anew each epoch."""
    from wmtp.data.samplers import UniformSampler

    return UniformSampler()


@register("sampler", "difficulty", spec=DifficultySamplingSpec)
def build_difficulty_sampler(spec: DifficultySamplingSpec) -> DifficultySampler:
    """Rows drawn by difficulty bin with fixed bin probabilities."""
    from wmtp.data.samplers import DifficultySampler

    return DifficultySampler(spec.bins, spec.weights)


# --------------------------------------------------------------------------- datasets


def _common(spec, tokenizer: Tokenizer, seed: int, progress: bool) -> dict:
    return dict(
        seed=seed,
        template=spec.template,
        max_length=spec.max_length,
        truncate=spec.truncate,
        n_samples=spec.n_samples,
        sampler=get("sampler", spec.sampling.kind)(spec.sampling),
        pairs=spec.pairs,
        packing=spec.packing,
        progress=progress,
    )


def jsonl_train_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/train.jsonl`` for a directory; a DataError naming what is
    wrong (no train.jsonl, one that is a folder, the metadata file named instead of the rows)."""
    p = Path(path).expanduser()
    if p.name.endswith("_metadata.json"):
        raise DataError(
            f"{p}: the rows' metadata, not the rows: give the .jsonl beside it, or the folder "
            "that holds train.jsonl"
        )
    if p.is_dir() and p.suffix != ".jsonl":  # a dataset directory
        train = p / "train.jsonl"
        if not train.exists():
            found = sorted(x.name for x in p.glob("*.jsonl"))
            raise DataError(
                f"{p}: a dataset directory needs train.jsonl (it has: {found or 'none'})"
            )
        return jsonl_train_file(train)
    if p.is_dir():
        raise DataError(f"{p}: a folder, not the rows' file")
    if not p.is_file():
        raise DataError(
            f"dataset file not found: {p} (give a .jsonl file, or a directory holding train.jsonl)"
        )
    return p


@register("dataset", "jsonl", spec=JsonlDataSpec)
def build_jsonl_dataset(
    spec: JsonlDataSpec, *, tokenizer: Tokenizer, seed: int, progress: bool = True
) -> TrainData:
    """A ``train.jsonl`` (with ``train_metadata.json`` when present), split by problem."""
    from wmtp.data.dataset import make_train_data

    return make_train_data(
        jsonl_train_file(spec.path),
        tokenizer,
        heldout_fraction=spec.split.heldout_fraction,
        heldout_path=spec.split.heldout_path,
        **_common(spec, tokenizer, seed, progress),
    )


@register("dataset", "humaneval", spec=HumanEvalDataSpec)
def build_humaneval_dataset(
    spec: HumanEvalDataSpec, *, tokenizer: Tokenizer, seed: int, progress: bool = True
) -> TrainData:
    """HumanEval with sandbox-labelled solutions, built and cached on first use. The builder
    splits the problems (``split.heldout_fraction``, a fixed seed, so every run holds out the
    same ones); ``split.heldout_path`` does not apply."""
    from wmtp.data.dataset import make_train_data
    from wmtp.data.humaneval import ensure_humaneval

    if spec.split.heldout_path is not None:
        raise DataError(
            "data.split.heldout_path does not apply to kind = 'humaneval': its builder splits "
            "the problems (set data.split.heldout_fraction)"
        )
    fraction = spec.split.heldout_fraction
    built = ensure_humaneval(spec.cache_dir, heldout_fraction=fraction, progress=progress)
    try:
        return make_train_data(
            built / "train.jsonl",
            tokenizer,
            heldout_path=built / "heldout.jsonl",
            **_common(spec, tokenizer, seed, progress),
        )
    except DataError as exc:
        raise _damaged_build(exc, built, fraction) from None


def _damaged_build(exc: DataError, built: Path, fraction: float) -> DataError:
    """A file of the cached HumanEval build that does not read (edited or cut short since it was
    built) as a problem of ``data.cache_dir``, the folder the user chose: its held-out file is
    the builder's, not a ``data.split.heldout_path`` the recipe set. Any other key's problem
    (a difficulty bin with weight and no rows) stays as it is."""
    from wmtp.data.humaneval import damaged_build

    if isinstance(exc, RecipeDataError) and exc.key != "data.split.heldout_path":
        return exc
    said = exc.message if isinstance(exc, RecipeDataError) else exc.render()
    return RecipeDataError("data.cache_dir", damaged_build(said, built, fraction))
