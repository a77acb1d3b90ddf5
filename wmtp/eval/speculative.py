"""Self-speculative decoding with the MTP heads (Gloeckle et al. 2024; Stern et al. 2018).

At the last committed position ``p`` head 1 gives the next token and heads 2..n guess the
``n - 1`` after it (the draft). One forward over ``[next, draft...]`` then gives head 1's choice
after each of them: the longest prefix of the draft that head 1 agrees with is accepted, and the
same forward already holds the next position's draft. Every forward commits at least one token;
with greedy head 1 the output is exactly plain greedy decoding, only with fewer forwards.

Batch size 1 (the paper's setting: latency of one request).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from wmtp.eval.generate import Completion, StopRule


@dataclass
class SpeculativeStats:
    """What the draft heads bought."""

    forwards: int = 0
    """Model forwards after the prompt's (each verifies one draft)."""
    drafted: int = 0
    """Draft tokens offered to head 1 for verification."""
    accepted: int = 0
    """Draft tokens head 1 agreed with."""
    generated: int = 0
    """Tokens committed (the completion, plus a stop string's tokens)."""
    seconds: float = 0.0
    first_token_s: float = 0.0
    """Time from the call until the first token is known (the prompt's forward)."""
    drafted_by_head: Counter = field(default_factory=Counter)
    """Head k (2..n) -> drafts of it offered for verification."""
    accepted_by_head: Counter = field(default_factory=Counter)
    """Head k -> drafts of it accepted (head 1 agreed with it and with every earlier head's)."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def acceptance_by_head(self) -> dict[int, float]:
        """Head k (2..n) -> the fraction of its drafts accepted. A draft counts as accepted only
        when every earlier head's was too, so the rates fall with k."""
        return {
            head: self.accepted_by_head[head] / drafted
            for head, drafted in sorted(self.drafted_by_head.items())
            if drafted
        }

    def count(self, offered: int, accepted: int) -> None:
        """One verification: the drafts of heads 2..offered+1, the first ``accepted`` kept."""
        self.forwards, self.drafted = self.forwards + 1, self.drafted + offered
        self.accepted += accepted
        self.drafted_by_head.update(range(2, 2 + offered))
        self.accepted_by_head.update(range(2, 2 + accepted))

    @property
    def tokens_per_forward(self) -> float:
        return self.generated / max(1, self.forwards + 1)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: SpeculativeStats) -> None:
        for name in ("forwards", "drafted", "accepted", "generated", "seconds", "first_token_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drafted_by_head.update(other.drafted_by_head)
        self.accepted_by_head.update(other.accepted_by_head)

    def as_dict(self) -> dict[str, object]:
        return {
            "forwards": self.forwards,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "generated": self.generated,
            "acceptance_rate": self.acceptance_rate,
            "acceptance_by_head": {str(k): v for k, v in self.acceptance_by_head().items()},
            "tokens_per_forward": self.tokens_per_forward,
            "tokens_per_s": self.tokens_per_s,
        }


@torch.inference_mode()
def speculative_generate(
    model: torch.nn.Module,
    prompt: list[int],
    stop_rule: StopRule,
    *,
    max_new_tokens: int,
    max_length: int | None = None,
    cuda_graphs: bool | None = None,
) -> tuple[Completion, SpeculativeStats]:
    """Greedy continuation of ``prompt`` drafted by heads 2..n and verified by head 1
    (``cuda_graphs``: replay the verify steps from CUDA graphs; default on a GPU)."""
    assert prompt, "the prompt needs at least one token (BOS)"
    n = model.n_heads
    max_length = max_length or model.args.max_seq_len
    limit = max(0, min(max_new_tokens, max_length - len(prompt)))
    stats = SpeculativeStats()
    started = time.perf_counter()
    if limit == 0:
        return Completion([], "", "length"), stats
    from wmtp.models.kv_cache import make_decoder

    device = next(model.parameters()).device
    decoder = make_decoder(model, 1, len(prompt) + limit, cuda_graphs=cuda_graphs)
    logits_SnV = decoder.prefill(torch.tensor([prompt], device=device))[0]
    draft = logits_SnV[-1].argmax(dim=-1).tolist()  # head k's guess of token k: [next, guesses]
    stats.first_token_s = time.perf_counter() - started
    generated: list[int] = []
    while True:
        generated.append(draft[0])
        if (done := stop_rule.finished(generated, limit)) is not None:
            break
        guesses = draft[1 : 1 + min(n - 1, limit - len(generated))]
        fed_1T = torch.tensor([[draft[0], *guesses]], device=device)
        # every head's choice after each fed token, read back once: [T][n]
        choices = decoder.step(fed_1T)[0].argmax(dim=-1).tolist()
        verified = [c[0] for c in choices]  # head 1: the true greedy token after each
        accepted = 0
        while accepted < len(guesses) and verified[accepted] == guesses[accepted]:
            accepted += 1
        stats.count(len(guesses), accepted)
        for token in guesses[:accepted]:
            generated.append(token)
            if (done := stop_rule.finished(generated, limit)) is not None:
                break
        if done is not None:
            break
        decoder.rewind(len(prompt) + len(generated))  # drop the rejected guesses' keys
        draft = choices[accepted]  # head 1's next token, heads 2..n's new guesses
    stats.generated = len(generated)
    stats.seconds = time.perf_counter() - started
    return done, stats


__all__ = ["SpeculativeStats", "speculative_generate"]
