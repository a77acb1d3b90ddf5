"""Self-speculative decoding with the MTP heads (Gloeckle et al. 2024; Stern et al. 2018).

At the last committed position ``p`` head 1 gives the next token and heads 2..n guess the
``n - 1`` after it (the draft). One forward over ``[next, draft...]`` then gives head 1's
distribution after each of them, and the draft is checked against it from the left; the same
forward already holds the next position's draft. Every forward commits at least one token.

- Greedy (temperature 0): a guess is accepted while it equals head 1's argmax, so the output is
  exactly plain greedy decoding, only with fewer forwards.
- Sampling (temperature > 0, top-p): speculative sampling (Leviathan et al. 2023; Chen et al.
  2023). Guess ``g`` of head k was drawn from head k's distribution ``q`` (the same temperature
  and nucleus); it is accepted with probability ``min(1, p(g) / q(g))``, ``p`` being head 1's
  distribution there; at the first rejection the token is drawn from ``max(0, p - q)``
  normalised, and when every guess is accepted one more token is drawn from ``p``. Every
  committed token is then distributed exactly as plain sampling from head 1 would draw it
  (``q`` may ignore the guesses before it: it only has to be fixed before ``g`` is drawn).
  One verification reads the device once: every acceptance test, every position's possible
  next token and the next draft are drawn together, and the ones used are read back.

Batch size 1 (the paper's setting: latency of one request).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from wmtp.eval.generate import Completion, Sampling, StopRule, next_token_probs

GREEDY = Sampling()


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


@dataclass
class Draft:
    """What one position offers: the next token (committed at once) and the guesses of heads
    2..n for the tokens after it, with (sampling) the distributions they were drawn from."""

    next: int
    guesses: list[int]
    q_GV: torch.Tensor | None = None


@torch.inference_mode()
def speculative_generate(
    model: torch.nn.Module,
    prompt: list[int],
    stop_rule: StopRule,
    *,
    max_new_tokens: int,
    max_length: int | None = None,
    cuda_graphs: bool | None = None,
    compiled: bool | None = None,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
) -> tuple[Completion, SpeculativeStats]:
    """The continuation of ``prompt`` drafted by heads 2..n and verified by head 1: greedy, or
    sampled as ``sampling`` says with ``generator`` (see the module doc). ``cuda_graphs``:
    replay the verify steps from CUDA graphs; ``compiled``: compile them (defaults: both on a
    GPU; see ``wmtp.models.kv_cache.make_decoder``)."""
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
    decoder = make_decoder(
        model, 1, len(prompt) + limit, cuda_graphs=cuda_graphs, compiled=compiled
    )
    logits_SnV = decoder.prefill(torch.tensor([prompt], device=device))[0]
    _, draft = verify(logits_SnV[-1:], Draft(-1, []), sampling, generator)
    stats.first_token_s = time.perf_counter() - started
    generated: list[int] = []
    while True:
        generated.append(draft.next)
        if (done := stop_rule.finished(generated, limit)) is not None:
            break
        draft.guesses = draft.guesses[: min(n - 1, limit - len(generated))]
        fed_1T = torch.tensor([[draft.next, *draft.guesses]], device=device)
        accepted, following = verify(decoder.step(fed_1T)[0], draft, sampling, generator)
        stats.count(len(draft.guesses), accepted)
        for token in draft.guesses[:accepted]:
            generated.append(token)
            if (done := stop_rule.finished(generated, limit)) is not None:
                break
        if done is not None:
            break
        decoder.rewind(len(prompt) + len(generated))  # drop the rejected guesses' keys
        draft = following
    stats.generated = len(generated)
    stats.seconds = time.perf_counter() - started
    return done, stats


def verify(
    logits_TnV: torch.Tensor,
    draft: Draft,
    sampling: Sampling,
    generator: torch.Generator | None,
) -> tuple[int, Draft]:
    """``(accepted, next draft)``: how many of ``draft.guesses`` head 1 accepts, given every
    head's logits after each fed token (``[T, n, V]``, ``T = 1 + len(guesses)``), and the draft
    at the position after the last accepted one (the module doc says how, greedy and sampled).
    With no guesses (``T = 1``: the prompt's last position) it is that position's draft."""
    guesses = draft.guesses
    if sampling.greedy:
        choices_Tn = logits_TnV.argmax(dim=-1).tolist()  # the one read of this verification
        accepted = 0
        while accepted < len(guesses) and choices_Tn[accepted][0] == guesses[accepted]:
            accepted += 1
        return accepted, Draft(choices_Tn[accepted][0], choices_Tn[accepted][1:])
    T, n, V = logits_TnV.shape
    G, device = len(guesses), logits_TnV.device
    probs_TnV = next_token_probs(logits_TnV, sampling)
    p_TV = probs_TnV[:, 0]
    # what each position's next token is drawn from if the draft stops there: the residual at a
    # rejected guess, head 1's p after the last guess
    next_from_TV = p_TV
    draws = torch.zeros(0, dtype=torch.long, device=device)  # acceptance tests, if any
    if G:
        g_G1 = torch.tensor(guesses, device=device)[:, None]
        p_G, q_G = p_TV[:G].gather(-1, g_G1)[:, 0], draft.q_GV[:G].gather(-1, g_G1)[:, 0]
        u_G = torch.rand(G, device=device, generator=generator)
        draws = (u_G * q_G <= p_G).long()  # accepted with probability min(1, p / q)
        residual_GV = (p_TV[:G] - draft.q_GV[:G]).clamp_min(0)
        # p == q (within rounding) leaves nothing: a rejection cannot happen there
        empty_G1 = residual_GV.sum(dim=-1, keepdim=True) <= 0
        next_from_TV = torch.cat([torch.where(empty_G1, p_TV[:G], residual_GV), p_TV[G:]])
    next_T = torch.multinomial(next_from_TV, 1, generator=generator)[:, 0]
    guesses_TG = (
        torch.multinomial(probs_TnV[:, 1:].reshape(T * (n - 1), V), 1, generator=generator)
        if n > 1
        else next_T[:0]  # one head: nothing to draft
    )
    read = torch.cat([draws, next_T, guesses_TG.view(-1)]).tolist()  # the one read
    accepted = next((i for i, ok in enumerate(read[:G]) if not ok), G)
    following = read[G + T :][accepted * (n - 1) : (accepted + 1) * (n - 1)]
    return accepted, Draft(read[G + accepted], following, probs_TnV[accepted, 1:])


__all__ = ["Draft", "SpeculativeStats", "speculative_generate", "verify"]
