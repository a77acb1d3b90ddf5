"""``[experiment]`` and ``[tokenizer]``: what a run is called, which pipeline runs, the tokenizer."""

from typing import Annotated, Literal, Union

from pydantic import Field

from wmtp.pipelines import NAMES as PIPELINE_NAMES
from wmtp.recipe._base import NUMERICS, Section

Pipeline = Literal[PIPELINE_NAMES]  # type: ignore[valid-type]
"""Names of ``wmtp.pipelines.PIPELINES``."""


class ExperimentSpec(Section):
    """What the run is called, which pipeline it runs and with what seed."""

    category = "cosmetic"

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)]
    """Experiment name; runs go to ``<runs_dir>/<name>/<YYYYmmdd-HHMMSS>-<hash8>/``."""
    pipeline: Annotated[Pipeline, NUMERICS] = "baseline"
    """What the run does, by the name of its pipeline (``wmtp.pipelines.PIPELINES``): ``wmtp list
    pipeline`` says what each trains, the models it uses and the weighting kinds it accepts."""
    seed: Annotated[int, NUMERICS, Field(ge=0, le=2**31 - 1)] = 42
    """Seed of every random number generator (data order, initialisation, dropout, sampling);
    below 2**31, so that every generator (and seed + rank) takes it."""
    runs_dir: str = "runs"
    """Directory that holds run directories, relative to the working directory."""
    description: str = ""
    """Free text for people; changes nothing."""
    tags: list[str] = Field(default_factory=list)
    """Free labels for people and dashboards; change nothing."""


class ByteTokenizerSpec(Section):
    """UTF-8 bytes plus a few special tokens: no file needed; for tiny models and tests."""

    category = "checkpoint"

    kind: Literal["byte"] = "byte"
    """Tokenizer type."""


class SentencePieceTokenizerSpec(Section):
    """A SentencePiece model file, e.g. Llama-2's ``tokenizer.model``."""

    category = "checkpoint"

    kind: Literal["sentencepiece"] = "sentencepiece"
    """Tokenizer type."""
    path: str
    """Path of the ``tokenizer.model`` file (or a directory holding one)."""


class HFTokenizerSpec(Section):
    """A Hugging Face ``tokenizer.json`` (read with the ``tokenizers`` library)."""

    category = "checkpoint"

    kind: Literal["hf"] = "hf"
    """Tokenizer type."""
    path: str
    """Path of ``tokenizer.json`` (or a directory holding one)."""


TokenizerSpec = Annotated[
    Union[ByteTokenizerSpec, SentencePieceTokenizerSpec, HFTokenizerSpec],
    Field(discriminator="kind"),
]
"""The one tokenizer every model of a recipe shares (their vocabularies must match it)."""
