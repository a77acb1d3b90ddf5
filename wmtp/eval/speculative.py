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
  One verification reads the device once: the acceptance tests, then the token at each row's
  stopping position and the next draft there are drawn on the device (distributions are made
  only where they are used: head 1's at every position, the drafting heads' at the stopping
  one), and read back together.

The verification (``Verification``) is the verify step's tail (``wmtp.models.kv_cache.StepTail``):
compiled with the forward and replayed in its CUDA graph, so a verify step launches no kernel of
its own after the forward. Sampled, its random numbers are drawn first, in one call of the
generator per step, and handed to the step as an input.

Batched: ``speculative_generate_batch`` decodes rows of one prompt length together (pass@k's
samples of one problem), each row verifying its own draft and committing its own number of
tokens per forward. The verify step is the fixed-shape step with a start position per row
(``StaticDecoder.chain_rows``: each row's position on the device), so one forward serves rows
that have drifted apart; one read per verify step brings every row's accepted count and next
draft to the host. Everything the next verification needs (positions, drafts, each row's budget
of tokens, so how many guesses it may be offered) stays on the device and is updated inside
the verify step's own graph, so the next step is queued before the host reads the last one, with
no kernel between the two: the GPU verifies while the host commits tokens and checks stop
rules. A row that ends at a stop string or EOS runs one verification more, never read. Each row
draws its own random numbers, from one generator in a fixed order. ``speculative_generate`` is
the batch of one (the paper's setting: latency of one request).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from wmtp.eval.generate import Completion, Sampling, StopRule, next_token_probs, running_sum
from wmtp.models.kv_cache import Chained, on_device

GREEDY = Sampling()


@dataclass
class SpeculativeStats:
    """What the draft heads bought."""

    prompt_forwards: int = 0
    """Prompt forwards, per row: each gives its row's first token (none for a row that may
    decode nothing)."""
    forwards: int = 0
    """Verify (decoding) forwards after the prompt's, per row: one verifying B rows' drafts
    counts B."""
    drafted: int = 0
    """Draft tokens offered to head 1 for verification."""
    accepted: int = 0
    """Draft tokens head 1 agreed with."""
    generated: int = 0
    """Tokens committed (the completion, plus a stop string's tokens): each row's first, from
    its prompt forward, and those of its verify forwards."""
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
        """Tokens a verify forward commits, on average (1 to the number of heads): those after
        each row's first (its prompt forward's), per verify forward; 0 with no verify forward."""
        decoded = self.generated - self.prompt_forwards
        return decoded / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: SpeculativeStats) -> None:
        """Count ``other`` in (decoded after this one: the times add up)."""
        names = ("prompt_forwards", "forwards", "drafted", "accepted", "generated")
        for name in (*names, "seconds", "first_token_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drafted_by_head.update(other.drafted_by_head)
        self.accepted_by_head.update(other.accepted_by_head)

    @staticmethod
    def of_batch(rows: list[SpeculativeStats]) -> SpeculativeStats:
        """A batch's totals: its rows' counts summed, its time once (the rows shared it)."""
        total = SpeculativeStats()
        for row in rows:
            total.add(row)
        total.seconds = max((row.seconds for row in rows), default=0.0)
        total.first_token_s = max((row.first_token_s for row in rows), default=0.0)
        return total

    def as_dict(self) -> dict[str, object]:
        return {
            "prompt_forwards": self.prompt_forwards,
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
class Drafts:
    """What each row's prompt offers (``first_drafts``): the next token (committed at once) and
    heads 2..n's guesses for the tokens after it. ``fed_BT`` (on the device) is the first verify
    forward's input ``[next, guesses...]``, ``tokens`` the host's copy of it; ``q_BGV``
    (sampling) the distributions the guesses were drawn from."""

    fed_BT: torch.Tensor
    tokens: list[list[int]]
    q_BGV: torch.Tensor | None = None


@torch.inference_mode()
def speculative_generate(
    model: torch.nn.Module,
    prompt: list[int],
    stop_rule: StopRule,
    *,
    max_new_tokens: int,
    **options,
) -> tuple[Completion, SpeculativeStats]:
    """The continuation of ``prompt``: ``speculative_generate_batch`` of one row (``options``:
    its keyword arguments)."""
    (completion,), (stats,) = speculative_generate_batch(
        model, [prompt], stop_rule, max_new_tokens=max_new_tokens, **options
    )
    return completion, stats


@torch.inference_mode()
def speculative_generate_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    stop_rule: StopRule,
    *,
    max_new_tokens: int,
    max_length: int | None = None,
    cuda_graphs: bool | None = None,
    compiled: bool | None = None,
    fused: bool | None = None,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
) -> tuple[list[Completion], list[SpeculativeStats]]:
    """The continuations of ``prompts`` (one length), drafted by heads 2..n and verified by head
    1, greedy or sampled as ``sampling`` says with ``generator`` (see the module doc), every row
    in one batch until all have finished; one ``SpeculativeStats`` per row (each with the
    batch's time: ``SpeculativeStats.of_batch`` sums them). ``cuda_graphs``: replay the verify
    steps from CUDA graphs; ``compiled``: compile them; ``fused``: fused projections (defaults:
    all three on a GPU; see ``wmtp.models.kv_cache.make_decoder``)."""
    assert all(prompts), "every prompt needs at least one token (BOS)"
    assert len({len(p) for p in prompts}) == 1, "the rows of a batch share a prompt length"
    B, P, n = len(prompts), len(prompts[0]), model.n_heads
    limit = max(0, min(max_new_tokens, (max_length or model.args.max_seq_len) - P))
    stats = [SpeculativeStats(prompt_forwards=int(limit > 0)) for _ in prompts]  # no room: none
    if limit == 0:
        return [Completion([], "", "length") for _ in prompts], stats
    started = time.perf_counter()
    steps = {"cuda_graphs": cuda_graphs, "compiled": compiled, "fused": fused}
    decoder, last_B1nV = _prefill(model, prompts, limit, steps)
    drafts = first_drafts(last_B1nV, sampling, generator)
    first_token_s = time.perf_counter() - started
    generated: list[list[int]] = [[] for _ in prompts]
    done = [_commit(generated[b], drafts.tokens[b][:1], stop_rule, limit) for b in range(B)]
    rows = _RowsOnDevice(decoder, P, limit, drafts.fed_BT, active=[d is None for d in done])

    def verify_after(q_BGV: torch.Tensor | None) -> _InFlight | None:
        """The verification of the drafts on the device (sampled: drawn from ``q_BGV``),
        queued, unless no row can still go on (one that has not ended and whose limit lies
        past the token it commits next)."""
        going_on = any(d is None and len(generated[b]) + 1 < limit for b, d in enumerate(done))
        return rows.verify(q_BGV, sampling, generator) if going_on else None

    checked, in_flight = drafts.tokens, verify_after(drafts.q_BGV)
    while in_flight is not None:
        # the next verification is queued before this one is read: the device works while the
        # host commits (a row that ends here runs once more, its result never read)
        queued = verify_after(in_flight.q_BGV)
        accepted, following = in_flight.read()
        for b in range(B):
            if done[b] is not None:
                continue
            offered = min(n - 1, limit - len(generated[b]))  # fewer guesses near the limit
            stats[b].count(offered, accepted[b])
            kept = checked[b][1 : 1 + accepted[b]] + following[b][:1]
            done[b] = _commit(generated[b], kept, stop_rule, limit)
            if done[b] is not None:
                rows.end(b)
        if all(d is not None for d in done):
            break  # a verification queued for a row that has just ended is left to run
        checked, in_flight = following, queued
    seconds = time.perf_counter() - started
    for row, tokens in zip(stats, generated, strict=True):
        row.generated, row.seconds, row.first_token_s = len(tokens), seconds, first_token_s
    return done, stats  # type: ignore[return-value]


def _prefill(model, prompts: list[list[int]], limit: int, steps: dict):
    """A decoder whose rows may advance apart, after the prompts' forward, and that forward's
    logits at the prompts' last position (``[B, 1, n, V]``). A verify step feeds n tokens to
    every row, finished or near its limit, and a row may run one verification past its end
    (queued before its end was read): the cache has room for both."""
    from wmtp.models.kv_cache import make_decoder

    B, P = len(prompts), len(prompts[0])
    decoder = make_decoder(model, B, P + limit + 2 * model.n_heads, rows_apart=True, **steps)
    prompts_BS = on_device(prompts, next(model.parameters()).device)
    return decoder, decoder.prefill(prompts_BS, last=True)


@dataclass
class _InFlight:
    """A queued verification: its drafts' distributions (sampled; on the device, the step's own
    buffer: the next verification's input) and the read of its results."""

    q_BGV: torch.Tensor | None
    reader: object

    def read(self) -> tuple[list[int], list[list[int]]]:
        """Each row's accepted count and its next ``[token, guesses...]`` (waits for them)."""
        read_BT = self.reader.tokens()
        return [row[0] for row in read_BT], [row[1:] for row in read_BT]


class _RowsOnDevice:
    """The rows' verifications as chained steps (``StaticDecoder.chain_rows``): each verify
    step feeds the drafts its predecessor wrote, moves each row by what it commits and lowers
    its budget (``room``: the tokens it may still commit, so how many guesses it may be offered;
    0 once the host has ended it, one verification late, at a stop string or EOS) inside its own
    graph, so the next one can be queued before the host has read the last one."""

    def __init__(self, decoder, P: int, limit: int, fed_BT: torch.Tensor, active: list[bool]):
        from wmtp.eval.generate import TokenReader

        self.decoder, self.n = decoder, fed_BT.shape[1]
        decoder.positions.fill_(P)  # the first committed token's position
        room = [limit - 1 if going else 0 for going in active]  # the first token is committed
        decoder.room.copy_(on_device(room, decoder.room.device))
        self.fed_BT = decoder.fed(self.n)  # the state's: each verify step writes the next drafts
        self.fed_BT.copy_(fed_BT)
        self.readers = [TokenReader((len(active), self.n + 1), fed_BT.device) for _ in range(2)]

    def verify(self, q_BGV: torch.Tensor | None, sampling: Sampling, generator) -> _InFlight:
        """Queue the verify step of the fed drafts, and the read of what it accepts and drafts."""
        verification = Verification(sampling)
        B, device = len(self.fed_BT), self.fed_BT.device
        inputs = verification.inputs(q_BGV, B, device, generator, self.n)
        read_BT, *q = self.decoder.chain_rows(self.n, tail=verification, inputs=inputs)
        reader = self.readers.pop(0)
        self.readers.append(reader)
        reader.start(read_BT)
        return _InFlight(q[0] if q else None, reader)

    def end(self, b: int) -> None:
        """Row ``b`` has ended: later verifications offer it nothing and leave it in place."""
        self.decoder.room.narrow(0, b, 1).fill_(0)  # not ``room[b] = 0``: a wait for the device


def _commit(
    generated: list[int], tokens: list[int], stop_rule: StopRule, limit: int
) -> Completion | None:
    """Append ``tokens`` to a row one at a time until it ends; its completion then, else None."""
    for token in tokens:
        generated.append(token)
        if (done := stop_rule.finished(generated, limit)) is not None:
            return done
    return None


def first_drafts(
    last_B1nV: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> Drafts:
    """Each row's draft at its prompt's last position (``[B, 1, n, V]``, nothing to verify yet):
    head 1's next token and heads 2..n's guesses, with their one read to the host."""
    B, n = last_B1nV.shape[0], last_B1nV.shape[2]
    verification = Verification(sampling)
    device = last_B1nV.device
    inputs = verification.inputs(None, B, device, generator, n)
    no_guesses_B1 = torch.zeros((B, 1), dtype=torch.long, device=device)
    no_room_B = torch.zeros(B, dtype=torch.long, device=device)
    fed_BT, _, (read_BT, *q_BGV) = verification(no_guesses_B1, last_B1nV, no_room_B, *inputs)
    tokens = [row[1:] for row in read_BT.tolist()]  # the one read
    return Drafts(fed_BT, tokens, q_BGV[0] if q_BGV else None)


@dataclass(frozen=True)
class Verification:
    """A verify step's tail (``wmtp.models.kv_cache.StepTail``, chained: ``Chained``): how many
    of its guesses each row's head 1 accepts, given every head's logits after each fed token
    (``[B, T, n, V]``, ``fed_BT = [next, guesses...]``), and each row's draft at the position
    after its last accepted guess (the module doc says how, greedy and sampled), fed to the next
    verify step. A row checks as many guesses as its budget allows (``room_B``: fewer near its
    limit, none once it has ended) and moves on by what it commits (none once ended). Its value
    keys the step's compiled code and graph: one per ``sampling``."""

    sampling: Sampling

    def inputs(self, q_BGV: torch.Tensor | None, B: int, device, generator, n: int) -> tuple:
        """The tail's inputs besides the logits and budgets: none greedy; sampled, every random
        number of the verification, drawn here in one call of ``generator`` (``[B, G + n]``:
        the acceptance tests, the stopping token, the new guesses), and the distributions
        ``q_BGV`` the guesses were drawn from (none before the first guesses)."""
        if self.sampling.greedy:
            return ()
        G = q_BGV.shape[1] if q_BGV is not None else 0
        uniforms_BU = torch.rand(B, G + n, device=device, generator=generator)
        return (uniforms_BU,) if q_BGV is None else (uniforms_BU, q_BGV)

    def __call__(
        self,
        fed_BT: torch.Tensor,
        logits_BTnV: torch.Tensor,
        room_B: torch.Tensor,
        uniforms_BU: torch.Tensor | None = None,
        q_BGV: torch.Tensor | None = None,
    ) -> Chained:
        """The next fed tokens, each row's advance, and the outputs: ``[accepted, next fed...]``
        per row (the one read), sampled also the next guesses' distributions."""
        guesses_BG = fed_BT[:, 1:]
        G = guesses_BG.shape[1]
        checked_BG = torch.arange(G, device=fed_BT.device) < room_B[:, None]
        if self.sampling.greedy:
            choices_BTn = logits_BTnV.argmax(dim=-1)
            accepted_B = _accepted(choices_BTn[:, :G, 0] == guesses_BG, checked_BG)
            next_fed_BT, q = _at(choices_BTn, accepted_B), ()  # head 1's token, the drafts
        else:
            args = (logits_BTnV, guesses_BG, q_BGV, checked_BG, uniforms_BU, self.sampling)
            accepted_B, next_fed_BT, next_q_BGV = sampled_verification(*args)
            q = (next_q_BGV,)
        advance_B = torch.where(room_B > 0, accepted_B + 1, 0)
        read_BT = torch.cat([accepted_B[:, None], next_fed_BT], dim=1)
        return Chained(next_fed_BT, advance_B, (read_BT, *q))


def sampled_verification(
    logits_BTnV: torch.Tensor,
    guesses_BG: torch.Tensor,
    q_BGV: torch.Tensor | None,
    checked_BG: torch.Tensor,
    uniforms_BU: torch.Tensor,
    sampling: Sampling,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling's verification given its uniforms (``[B, G + n]``): ``(accepted_B,
    fed_BT, q_BGV)``, the next verify forward's input ``[token, guesses...]`` and the
    distributions its guesses were drawn from. Distributions are made only where they are used:
    head 1's at every position, the drafting heads' at each row's stopping position."""
    G = guesses_BG.shape[1]
    p_BTV = next_token_probs(logits_BTnV[:, :, 0], sampling)  # head 1 at every position
    passes_BG = guesses_BG.bool()
    if G:  # accepted with probability min(1, p / q) of the guess
        g_BG1 = guesses_BG[:, :, None]
        p_BG, q_BG = p_BTV[:, :G].gather(-1, g_BG1)[..., 0], q_BGV.gather(-1, g_BG1)[..., 0]
        passes_BG = uniforms_BU[:, :G] * q_BG <= p_BG
    accepted_B = _accepted(passes_BG, checked_BG)
    next_B1 = _next_token(p_BTV, q_BGV, accepted_B, uniforms_BU[:, G])[:, None]
    q_BGV = next_token_probs(_at(logits_BTnV[:, :, 1:], accepted_B), sampling)
    drafted_BG = draw(q_BGV, uniforms_BU[:, G + 1 :])
    return accepted_B, torch.cat([next_B1, drafted_BG], dim=1), q_BGV


def _accepted(passes_BG: torch.Tensor, checked_BG: torch.Tensor) -> torch.Tensor:
    """Each row's count of guesses accepted in a row ``[B]``: checked, and passing."""
    return (passes_BG & checked_BG).long().cumprod(dim=-1).sum(dim=-1)


def _at(x_BT_: torch.Tensor, at_B: torch.Tensor) -> torch.Tensor:
    """``x_BT_[b, at_B[b]]`` for every row: the position after each row's last accepted guess."""
    index = at_B.view(-1, *[1] * (x_BT_.dim() - 1)).expand(-1, 1, *x_BT_.shape[2:])
    return x_BT_.gather(1, index)[:, 0]


def _next_token(p_BTV, q_BGV, accepted_B, uniforms_B) -> torch.Tensor:
    """Each row's token at its stopping position ``[B]``: from the residual ``max(p - q, 0)`` at a
    rejected guess, from head 1's p after the last one. A row offered fewer guesses (near its
    limit) may stop after the last one offered, at the residual of an unchecked one: that token
    lies past its limit and is never committed."""
    G = p_BTV.shape[1] - 1
    p_BV = _at(p_BTV, accepted_B)
    if G:
        q_BV = _at(q_BGV, accepted_B.clamp(max=G - 1))
        residual_BV = (p_BV - q_BV).clamp_min(0)
        # p == q (within rounding) leaves nothing: a rejection cannot happen there
        use_residual_B1 = ((accepted_B < G) & (residual_BV.sum(dim=-1) > 0))[:, None]
        p_BV = torch.where(use_residual_B1, residual_BV, p_BV)
    return draw(p_BV[:, None], uniforms_B[:, None])[:, 0]


def draw(weights_BGV: torch.Tensor, uniforms_BG: torch.Tensor) -> torch.Tensor:
    """One token from each ``[B, G, V]`` distribution (non-negative weights, normalised or not):
    ``[B, G]``, by inverting its cumulative sum at the uniform in ``[0, 1)`` of the same place;
    a token of weight 0 is never drawn (G may be 0). Speculative sampling needs distributions in
    vocabulary order (its ratios and residuals); plain sampling inverts the sorted nucleus
    instead (``wmtp.eval.generate.sample_next``), with no distribution written back."""
    cdf_BGV = running_sum(weights_BGV)
    total_BG1 = cdf_BGV[..., -1:]
    # the last token with weight: the first whose cumulative sum reaches the total (a draw of
    # u * total that rounds up to the total lands there, not on the zero weights after it)
    last_BG1 = (cdf_BGV < total_BG1).sum(dim=-1, keepdim=True)
    at_BG1 = uniforms_BG[..., None].to(cdf_BGV.dtype) * total_BG1
    # the first token whose cumulative sum passes the draw: as many as do not (searchsorted's
    # answer, as one reduction that compiles into the cumulative sum's kernel)
    drawn_BG1 = (cdf_BGV <= at_BG1).sum(dim=-1, keepdim=True)
    return torch.minimum(drawn_BG1, last_BG1)[..., 0]


__all__ = [
    "Drafts",
    "SpeculativeStats",
    "Verification",
    "draw",
    "first_drafts",
    "sampled_verification",
    "speculative_generate",
    "speculative_generate_batch",
]
