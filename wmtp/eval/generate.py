"""Batched sampling and greedy decoding with head 1, stop sequences and per-sample token limits.

``generate`` continues a batch of tokenised prompts together: every step feeds each unfinished
row its last token (see ``wmtp.eval.decoding``: the model's KV cache, or recomputation), samples
the next token from head 1 and stops a row at its end-of-sequence token, at the first of its stop
strings (the completion is cut just before it), or at its own token limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from wmtp.eval.decoding import open_state


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy at ``temperature == 0``, else nucleus sampling."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        assert self.temperature >= 0 and 0 < self.top_p <= 1, (self.temperature, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample_next(
    logits_BV: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next tokens ``[B]``: argmax when greedy, else a draw from the top-p nucleus."""
    if sampling.greedy:
        return logits_BV.argmax(dim=-1)
    # fp32: a bf16 softmax over 32k logits loses the tail mass top-p is about
    probs_BV = torch.softmax(logits_BV.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        mass_before_BV = sorted_BV.cumsum(dim=-1) - sorted_BV
        sorted_BV = sorted_BV.masked_fill(mass_before_BV >= sampling.top_p, 0.0)
        probs_BV = torch.zeros_like(probs_BV).scatter(-1, order_BV, sorted_BV)
    choice_B1 = torch.multinomial(probs_BV, 1, generator=generator)
    return choice_B1.squeeze(-1)


@dataclass
class Completion:
    """One generated continuation."""

    tokens: list[int]
    """Generated token ids, without the end-of-sequence token, cut before a stop string."""
    text: str
    finish_reason: str
    """``"eos"``, ``"stop"`` (a stop string), or ``"length"`` (the row's token limit)."""


class StopRule:
    """Decides when a row is finished and what its final text is."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        stop: Sequence[str] = (),
        eos_id: int | None = None,
    ):
        self.decode, self.stop, self.eos_id = decode, tuple(s for s in stop if s), eos_id

    def first_stop(self, text: str) -> int | None:
        """Index of the earliest stop string in ``text``, or None."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def finished(self, tokens: list[int], limit: int) -> Completion | None:
        """The completion when ``tokens`` (so far) ends the row, else None."""
        if self.eos_id is not None and tokens and tokens[-1] == self.eos_id:
            body = tokens[:-1]
            return Completion(body, self.decode(body), "eos")
        text = self.decode(tokens)
        cut = self.first_stop(text)
        if cut is not None:
            return Completion(self._tokens_before(tokens, cut), text[:cut], "stop")
        if len(tokens) >= limit:
            return Completion(list(tokens), text, "length")
        return None

    def _tokens_before(self, tokens: list[int], cut: int) -> list[int]:
        """The longest token prefix whose text fits before the stop string."""
        for n in range(len(tokens), -1, -1):
            if len(self.decode(tokens[:n])) <= cut:
                return tokens[:n]
        return []


def _limits(
    prompts: list[list[int]], max_new_tokens: int | Sequence[int], max_length: int
) -> list[int]:
    wanted = (
        [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    )
    assert len(wanted) == len(prompts), (len(wanted), len(prompts))
    return [max(0, min(w, max_length - len(p))) for w, p in zip(wanted, prompts, strict=True)]


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    stop_rule: StopRule,
    *,
    max_new_tokens: int | Sequence[int],
    sampling: Sampling = Sampling(),
    generator: torch.Generator | None = None,
    max_length: int | None = None,
) -> list[Completion]:
    """Continue every prompt (token ids, BOS included) with head 1; one ``Completion`` each.

    ``max_new_tokens`` is one limit for all rows or one per row; a row also stops at
    ``max_length`` tokens in all (default: the model's ``max_seq_len``).
    """
    assert all(prompts), "every prompt needs at least one token (BOS)"
    max_length = max_length or model.args.max_seq_len
    limits = _limits(prompts, max_new_tokens, max_length)
    state = open_state(model, len(prompts), max_length=max_length)
    generated: list[list[int]] = [[] for _ in prompts]
    done: list[Completion | None] = [
        Completion([], "", "length") if limit == 0 else None for limit in limits
    ]
    feed = [list(p) if d is None else [] for p, d in zip(prompts, done, strict=True)]
    while any(d is None for d in done):
        hidden = state.feed(feed, heads=(1,))
        rows = [b for b, d in enumerate(done) if d is None]
        last_RD = torch.stack([hidden[b][-1, 0] for b in rows])
        next_R = sample_next(model.output(last_RD), sampling, generator).tolist()
        feed = [[] for _ in prompts]
        for b, token in zip(rows, next_R, strict=True):
            generated[b].append(token)
            done[b] = stop_rule.finished(generated[b], limits[b])
            if done[b] is None:
                feed[b] = [token]
    return [d for d in done if d is not None]


__all__ = ["Completion", "Sampling", "StopRule", "generate", "sample_next"]
