"""Batched sampling and greedy decoding with head 1, stop sequences and per-sample token limits.

``generate`` continues tokenised prompts with the model's KV cache (``wmtp.models.kv_cache``):
prompts of the same length decode together, up to ``batch_size`` rows (the cache keeps the rows
of a batch at one position; pass@k's samples of one problem are such a batch). Each step samples
head 1's next token for every row; a row ends at its end-of-sequence token, at the first of its
stop strings (the completion is cut just before it), or at its own token limit, and is carried
along, ignored, until its batch is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


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


def next_token_probs(logits_V: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution a sampled token is drawn from, over the last dimension of ``logits_V``
    (any leading dimensions): softmax at ``temperature``, cut to the top-p nucleus (the smallest
    set of the most likely tokens whose mass reaches ``top_p``) and normalised again. fp32: a bf16
    softmax over 32k logits loses the tail mass top-p is about. Not for greedy decoding."""
    assert not sampling.greedy, "greedy decoding takes the argmax"
    probs_V = torch.softmax(logits_V.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_V, order_V = probs_V.sort(dim=-1, descending=True)
        mass_before_V = sorted_V.cumsum(dim=-1) - sorted_V
        sorted_V = sorted_V.masked_fill(mass_before_V >= sampling.top_p, 0.0)
        probs_V = torch.zeros_like(probs_V).scatter(-1, order_V, sorted_V)
        probs_V = probs_V / probs_V.sum(dim=-1, keepdim=True)
    return probs_V


def sample_next(
    logits_BV: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next tokens ``[B]``: argmax when greedy, else a draw from the top-p nucleus."""
    if sampling.greedy:
        return logits_BV.argmax(dim=-1)
    probs_BV = next_token_probs(logits_BV, sampling)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


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


def next_token_view(model: torch.nn.Module) -> torch.nn.Module:
    """The model with head 1 only, sharing its weights: the shape plain decoding runs (its
    decoder keeps head 1 alone), for the weights it reads and a peer of that shape."""
    if model.n_heads == 1:
        return model
    import copy
    import dataclasses

    from torch import nn

    view = copy.copy(model)
    view._modules = dict(model._modules)  # copy.copy shares the submodule table
    view._modules["extra_heads"] = nn.ModuleList()
    view.args = dataclasses.replace(
        model.args, n_future_tokens=1, n_layers=model.args.n_layers - (model.n_heads - 1)
    )
    return view


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
    batch_size: int = 16,
    cuda_graphs: bool | None = None,
    compiled: bool | None = None,
    fused: bool | None = None,
) -> list[Completion]:
    """Continue every prompt (token ids, BOS included) with head 1; one ``Completion`` each.

    ``max_new_tokens`` is one limit for all rows or one per row; a row also stops at
    ``max_length`` tokens in all (default: the model's ``max_seq_len``). ``cuda_graphs``: replay
    each decoding step from a CUDA graph; ``compiled``: compile the step; ``fused``: fused
    projections (defaults: all three on a GPU; see ``wmtp.models.kv_cache.make_decoder``). Only
    head 1's layer runs.
    """
    assert all(prompts), "every prompt needs at least one token (BOS)"
    limits = _limits(prompts, max_new_tokens, max_length or model.args.max_seq_len)
    results: list[Completion | None] = [None] * len(prompts)
    for rows in _same_length_batches(prompts, batch_size):
        outs = _generate_batch(
            model,
            [prompts[i] for i in rows],
            [limits[i] for i in rows],
            stop_rule,
            sampling,
            generator,
            {"cuda_graphs": cuda_graphs, "compiled": compiled, "fused": fused},
        )
        for i, out in zip(rows, outs, strict=True):
            results[i] = out
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _same_length_batches(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of prompts grouped by length (order kept within a group), at most ``batch_size``."""
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    return [
        group[start : start + batch_size]
        for group in by_length.values()
        for start in range(0, len(group), batch_size)
    ]


def _generate_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    limits: list[int],
    stop_rule: StopRule,
    sampling: Sampling,
    generator: torch.Generator | None,
    steps: dict[str, bool | None],
) -> list[Completion]:
    """Decode rows of one prompt length in lockstep until every row has finished (``steps``:
    the decoder's ``cuda_graphs`` and ``compiled``). The next step is queued before the host
    reads this step's tokens, so the device works while the host checks the stop rules; it is
    skipped when every row ends at these tokens by its limit, so the steps taken are those a
    read-then-step loop takes, plus one when a row ends early (EOS, stop string)."""
    from wmtp.models.kv_cache import make_decoder

    device = next(model.parameters()).device
    done: list[Completion | None] = [
        Completion([], "", "length") if limit == 0 else None for limit in limits
    ]
    if all(d is not None for d in done):
        return done  # type: ignore[return-value]
    max_len = len(prompts[0]) + max(limits)
    decoder = make_decoder(model, len(prompts), max_len, kept_heads=[1], **steps)
    logits_BV = decoder.prefill(torch.tensor(prompts, device=device), heads=[1])[:, -1, 0]
    generated: list[list[int]] = [[] for _ in prompts]
    reader = TokenReader(len(prompts), device)
    while True:
        next_B = sample_next(logits_BV, sampling, generator)
        reader.start(next_B)
        if _another_step_needed(done, generated, limits):
            logits_BV = decoder.step(next_B[:, None], heads=[1])[:, -1, 0]
        for b, token in enumerate(reader.tokens()):
            if done[b] is None:
                generated[b].append(token)
                done[b] = stop_rule.finished(generated[b], limits[b])
        if all(d is not None for d in done):
            return done  # type: ignore[return-value]


def _another_step_needed(
    done: list[Completion | None], generated: list[list[int]], limits: list[int]
) -> bool:
    """Whether a row may go on after the tokens being read: one not done whose limit lies
    beyond them (a row at its limit ends there, whatever the tokens are)."""
    rows = zip(done, generated, limits, strict=True)
    return any(d is None and len(tokens) + 1 < limit for d, tokens, limit in rows)


class TokenReader:
    """Reads a step's tokens to the host without waiting for the work queued after them: on
    CUDA a copy into pinned memory and an event, so the next step runs on the GPU while the host
    checks stop rules (the one read per step). Elsewhere a plain copy."""

    def __init__(self, batch_size: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host_B = torch.empty(batch_size, dtype=torch.long, pin_memory=self.cuda)
        self.copied = torch.cuda.Event() if self.cuda else None

    def start(self, tokens_B: torch.Tensor) -> None:
        """Queue the copy of ``tokens_B``."""
        self.host_B.copy_(tokens_B, non_blocking=self.cuda)
        if self.copied is not None:
            self.copied.record(torch.cuda.current_stream(tokens_B.device))

    def tokens(self) -> list[int]:
        """The tokens of the last ``start``, once copied."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.host_B.tolist()


__all__ = [
    "Completion",
    "Sampling",
    "StopRule",
    "generate",
    "next_token_probs",
    "next_token_view",
    "sample_next",
]
