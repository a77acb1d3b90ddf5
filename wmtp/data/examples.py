"""One training example: its fields, the prompt template, and its tokens with the prompt masked.

A row of ``train.jsonl`` holds ``instruction``, ``input`` (may be empty), ``output`` (the
solution), ``problem_id``, ``is_correct`` and, when known, ``difficulty``. The prompt (template,
instruction, input) is context only: its labels are -100, and only the response (``output`` then
EOS) is learned. Labels are *unshifted*: ``labels[t] == input_ids[t]`` where learned; the loss
shifts per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wmtp.data.tokenizers import Tokenizer

IGNORE_INDEX = -100
TemplateName = Literal["alpaca", "plain"]

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One solution of one problem."""

    instruction: str
    output: str
    problem_id: str
    is_correct: bool
    input: str = ""
    difficulty: int | None = None


@dataclass(frozen=True)
class Encoded:
    """Token ids and unshifted labels of one example (prompt labels are -100)."""

    input_ids: list[int]
    labels: list[int]
    problem_id: str
    is_correct: bool

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_prompt(self) -> int:
        """Number of leading masked tokens (BOS and prompt)."""
        return next((i for i, y in enumerate(self.labels) if y != IGNORE_INDEX), len(self.labels))


def format_prompt(instruction: str, input: str = "", template: TemplateName = "alpaca") -> str:
    """The prompt text in front of a response."""
    if template == "plain":
        return f"{instruction}\n{input}\n" if input else instruction
    assert template == "alpaca", template
    fmt = ALPACA_WITH_INPUT if input else ALPACA_NO_INPUT
    return fmt.format(instruction=instruction, input=input)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _prompt_tokens(prompt: str, prompt_ids: list[int], full_ids: list[int], tokenizer) -> int:
    """How many leading tokens of ``full_ids`` (BOS first) are BOS and prompt: the common prefix
    with the prompt tokenized alone, then any further tokens whose text still lies inside the
    prompt (BPE may cut the prompt's end differently when a response follows it, ``"▁in"`` alone
    but ``"▁i" "nstruction"`` whole: ``"▁i"`` is prompt). A token that takes in text of the
    response, merged across the boundary, is response."""
    n = _common_prefix(prompt_ids, full_ids)
    if n >= len(prompt_ids) or n < 1:
        return n
    shown = tokenizer.decode(full_ids[1:n])
    if not prompt.startswith(shown):  # decoding is not exact for this tokenizer: keep the prefix
        return n
    while n < len(full_ids):
        longer = tokenizer.decode(full_ids[1 : n + 1])
        if len(longer) <= len(shown) or not prompt.startswith(longer):
            return n
        n, shown = n + 1, longer
    return n


def fit_to_length(encoded: Encoded, max_length: int | None, truncate: bool) -> Encoded | None:
    """``encoded`` as it trains under ``max_length``: whole when it fits; else with ``truncate``
    its end cut (keeping at least one learned token, else ``None``); without, ``None``."""
    if max_length is None or len(encoded) <= max_length:
        return encoded
    if not truncate or encoded.n_prompt >= max_length:
        return None
    return Encoded(
        encoded.input_ids[:max_length],
        encoded.labels[:max_length],
        encoded.problem_id,
        encoded.is_correct,
    )


def encode_example(
    example: Example,
    tokenizer: Tokenizer,
    *,
    template: TemplateName = "alpaca",
    max_length: int | None = None,
    truncate: bool = False,
) -> Encoded | None:
    """BOS + prompt + output + EOS as ids, the prompt's labels masked to -100: the prompt's ids
    as ``wmtp eval`` feeds them wherever the text allows (:func:`_ids_and_prompt_length`). Over
    ``max_length``: :func:`fit_to_length`. Callers count the ``None``s they skip.
    """
    prompt = format_prompt(example.instruction, example.input, template)
    ids, n_prompt = _ids_and_prompt_length(prompt, example.output, tokenizer)
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    encoded = Encoded(ids, labels, example.problem_id, example.is_correct)
    return fit_to_length(encoded, max_length, truncate)


def _ids_and_prompt_length(prompt: str, output: str, tokenizer: Tokenizer) -> tuple[list[int], int]:
    """The ids a row trains on and how many lead with BOS and prompt.

    ``wmtp eval`` feeds the prompt tokenized alone, so a row starts with those ids wherever the
    text allows. Prompt + output tokenized whole, where the prompt's ids lead it (SentencePiece
    after the templates' closing newline); else the prompt's ids, then the output's tokenized
    alone, where the two decode as the whole text does (a byte-level BPE, whose pre-tokenizer
    joins a newline to the indentation after it: whole, one token would span the boundary, and
    evaluation would ask the model to go on from ids it never saw before a response). Neither
    (a SentencePiece dummy prefix would put a space into the text): the text tokenized whole,
    its prompt share found by :func:`_prompt_tokens`."""
    full_ids = tokenizer.encode(prompt + output, bos=True, eos=True)
    prompt_ids = tokenizer.encode(prompt, bos=True)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return full_ids, len(prompt_ids)
    apart = prompt_ids + tokenizer.encode(output, eos=True)
    if tokenizer.decode(apart) == tokenizer.decode(full_ids):
        return apart, len(prompt_ids)
    return full_ids, _prompt_tokens(prompt, prompt_ids, full_ids, tokenizer)


def padded_length(longest: int, multiple_of: int = 1, max_length: int | None = None) -> int:
    """``longest`` rounded up to ``multiple_of``, but never past ``max_length`` (which the longest
    example already fits): the few fixed shapes compiled blocks see (``ParallelSpec.pad_multiple``)."""
    rounded = -(-longest // multiple_of) * multiple_of
    return max(longest, min(rounded, max_length)) if max_length else rounded
