"""Sampling and greedy decoding with head 1, continuously batched, with stop sequences and
per-row token limits.

``generate`` continues tokenised prompts with the model's KV cache (``wmtp.models.kv_cache``),
``batch_size`` rows at a time, each row at its own position: a row that ends hands its slot to
the next prompt at once (``decode_rows``), so pass@k's samples of many problems, of any prompt
lengths, share every step. Each step draws head 1's next token for every row; a row ends at its
end-of-sequence token, at the first of its stop strings (the completion is cut just before it),
or at its own token limit. A sampled row draws from its own seeded stream of uniforms, so its
tokens do not depend on the rows that decode beside it.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from wmtp.models.kv_cache import Chained, on_device


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


SCAN_BLOCK = 128
"""``running_sum`` sums blocks of this many entries, then the blocks' totals."""


def running_sum(x_V: torch.Tensor) -> torch.Tensor:
    """The cumulative sum over the last dimension, as two matrix products with triangles of
    ones: the running sums within blocks of ``SCAN_BLOCK`` entries, then the sum of the blocks
    before each. No scan: ``torch.compile`` (2.11, CUDA) fails on a decoding step's scans of
    20 rows x 32k probabilities (a split scan: ``TypeError``; blocked scans: ``View``), and the
    step's choice of tokens then ran eagerly after its CUDA graph (one H200, 2026-12-04).
    In fp64, whatever the TF32 setting: products of ones at least as exact as an fp32 scan."""
    V = x_V.shape[-1]
    x64_V = x_V.double()
    blocks_VB = torch.nn.functional.pad(x64_V, (0, -V % SCAN_BLOCK)).unflatten(-1, (-1, SCAN_BLOCK))
    within_VB = blocks_VB @ _ones_up_to(SCAN_BLOCK, x64_V, diagonal=0)
    totals_V = within_VB[..., -1]
    before_V = totals_V @ _ones_up_to(totals_V.shape[-1], x64_V, diagonal=1)
    return (within_VB + before_V[..., None]).flatten(-2)[..., :V].to(x_V.dtype)


def _ones_up_to(n: int, like: torch.Tensor, diagonal: int) -> torch.Tensor:
    """``[n, n]`` ones on and above ``diagonal`` (0: the diagonal's too), zeros below: a row
    vector times it sums, at each column, the entries up to that column (1: before it)."""
    return torch.ones(n, n, dtype=like.dtype, device=like.device).triu(diagonal)


def next_token_probs(logits_V: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution a sampled token is drawn from, over the last dimension of ``logits_V``
    (any leading dimensions): softmax at ``temperature``, cut to the top-p nucleus (the smallest
    set of the most likely tokens whose mass reaches ``top_p``) and normalised again. fp32: a bf16
    softmax over 32k logits loses the tail mass top-p is about. Not for greedy decoding."""
    assert not sampling.greedy, "greedy decoding takes the argmax"
    probs_V = torch.softmax(logits_V.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_V, order_V = probs_V.sort(dim=-1, descending=True)
        mass_before_V = running_sum(sorted_V) - sorted_V
        sorted_V = sorted_V.masked_fill(mass_before_V >= sampling.top_p, 0.0)
        sorted_V = sorted_V / sorted_V.sum(dim=-1, keepdim=True)  # before the scatter: Inductor
        # (torch 2.11, CUDA) fails to compile the sum of a scattered tensor
        probs_V = torch.zeros_like(probs_V).scatter(-1, order_V, sorted_V)
    return probs_V


def sample_next(
    logits_BV: torch.Tensor, sampling: Sampling, uniforms_B: torch.Tensor | None = None
) -> torch.Tensor:
    """Next tokens ``[B]``: argmax when greedy, else a draw from the top-p nucleus by inverting
    its cumulative distribution at each row's uniform in ``[0, 1)`` (``uniforms_B``: a row's own
    random numbers make its tokens independent of the rows beside it).

    The nucleus is drawn from in the order of its sort, where it is a prefix: one cumulative sum
    both finds it and is inverted, with no distribution written back in vocabulary order
    (``next_token_probs``, which speculative sampling needs, does that)."""
    if sampling.greedy:
        return logits_BV.argmax(dim=-1)
    assert uniforms_B is not None, "sampling draws from the rows' uniforms"
    probs_BV = torch.softmax(logits_BV.float() / sampling.temperature, dim=-1)
    order_BV = None
    if sampling.top_p < 1.0:
        # sorted by the logits in their own dtype: the probabilities' order (a softmax keeps
        # it), with 16-bit keys under bf16 where the probabilities are 32-bit
        order_BV = logits_BV.argsort(dim=-1, descending=True)
        probs_BV = probs_BV.gather(-1, order_BV)
    cdf_BV = running_sum(probs_BV)
    # the nucleus's last token: every token whose mass before it is under top_p is in it (all
    # of them at top_p = 1, whatever the rounding of their sum)
    under = sampling.top_p if order_BV is not None else math.inf
    last_B1 = (cdf_BV < under).sum(dim=-1, keepdim=True).clamp_(max=cdf_BV.shape[-1] - 1)
    at_B1 = uniforms_B[:, None].to(cdf_BV.dtype) * cdf_BV.gather(-1, last_B1)
    # the first token whose cumulative mass passes u: zero-probability tokens are never drawn
    drawn_B1 = torch.searchsorted(cdf_BV, at_B1, right=True).clamp_(max=last_B1)
    return (drawn_B1 if order_BV is None else order_BV.gather(-1, drawn_B1)).squeeze(-1)


@dataclass(frozen=True)
class NextTokens:
    """A plain decoding step's tail (``wmtp.models.kv_cache.StepTail``, chained: ``Chained``):
    head 1's next token of every row after the step's last position (``sample_next``, with each
    row's uniform when sampled), drawn in the step's own compiled code and CUDA graph and fed
    to the next step; every row moves on by one."""

    sampling: Sampling

    def __call__(
        self,
        tokens_BS: torch.Tensor,
        logits_BSnV: torch.Tensor,
        room_B: torch.Tensor,
        uniforms_B: torch.Tensor | None = None,
    ) -> Chained:
        next_B = sample_next(logits_BSnV[:, -1, 0], self.sampling, uniforms_B)
        return Chained(next_B[:, None], torch.ones_like(next_B), ())


@dataclass
class Completion:
    """One generated continuation."""

    tokens: list[int]
    """Generated token ids, without the end-of-sequence token, cut before a stop string."""
    text: str
    finish_reason: str
    """``"eos"``, ``"stop"`` (a stop string), or ``"length"`` (the row's token limit)."""


class StopRule:
    """Decides when a row is finished and what its final text is.

    ``decode`` gives a completion's text (as a continuation of its prompt). ``peek``, where
    given, decodes a few tokens on their own (the tokenizer's ``decode``): a new stop string
    ends within the last tokens, so each step looks for one in their text alone and decodes the
    whole completion only once one shows up, not at every token."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        stop: Sequence[str] = (),
        eos_id: int | None = None,
        peek: Callable[[list[int]], str] | None = None,
    ):
        self.decode, self.stop, self.eos_id = decode, tuple(s for s in stop if s), eos_id
        self.peek = peek
        # a token is at least one byte: a stop string's bytes (4 per character at most), the
        # token that completed it and one before (whose text decoded alone may differ)
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 2

    def first_stop(self, text: str) -> int | None:
        """Index of the earliest stop string in ``text``, or None."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def finished(self, tokens: list[int], limit: int) -> Completion | None:
        """The completion when ``tokens`` (so far, one more than at the last call) ends the
        row, else None."""
        if self.eos_id is not None and tokens and tokens[-1] == self.eos_id:
            body = tokens[:-1]
            return Completion(body, self.decode(body), "eos")
        if len(tokens) < limit and not self._may_stop(tokens):
            return None
        text = self.decode(tokens)
        cut = self.first_stop(text)
        if cut is not None:
            return Completion(self._tokens_before(tokens, cut), text[:cut], "stop")
        if len(tokens) >= limit:
            return Completion(list(tokens), text, "length")
        return None

    def _may_stop(self, tokens: list[int]) -> bool:
        """Whether a stop string may have appeared: always without ``peek``."""
        if not self.stop:
            return False
        if self.peek is None:
            return True
        tail = self.peek(tokens[-self.window :])
        return any(s in tail for s in self.stop)

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
    ``max_length`` tokens in all (default: the model's ``max_seq_len``). Sampled, each row draws
    from its own stream, seeded from ``generator``. ``batch_size`` rows decode at once
    (``decode_rows``). ``cuda_graphs``: replay each decoding step from a CUDA graph;
    ``compiled``: compile the step; ``fused``: fused projections (defaults: all three on a GPU;
    see ``wmtp.models.kv_cache.make_decoder``). Only head 1's layer runs.
    """
    assert all(prompts), "every prompt needs at least one token (BOS)"
    limits = _limits(prompts, max_new_tokens, max_length or model.args.max_seq_len)
    seeds = [0] * len(prompts)
    if not sampling.greedy:
        device = generator.device if generator is not None else "cpu"
        drawn = torch.randint(2**62, (len(prompts),), generator=generator, device=device)
        seeds = drawn.tolist()
    rows = [Row(p, stop_rule, n, seed) for p, n, seed in zip(prompts, limits, seeds, strict=True)]
    return decode_rows(
        model, rows, slots=min(batch_size, len(rows)), sampling=sampling,
        cuda_graphs=cuda_graphs, compiled=compiled, fused=fused,
    )  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One completion to make."""

    prompt: list[int]
    """Token ids, BOS included."""
    stop_rule: StopRule
    limit: int
    """New tokens at most (its prompt and these fit the model's context)."""
    seed: int = 0
    """Sampled: its random numbers, one uniform per token from a generator seeded by this, so
    its tokens depend on nothing else that decodes with it."""


@dataclass
class StepTally:
    """Where continuously batched decoding's time went, for a report: whether the device or the
    host set the pace, how full the slots were, what compiling the steps cost."""

    slots: int = 0
    steps: int = 0
    """Decoding steps run (each one token for every busy slot)."""
    busy_slot_steps: int = 0
    """Slot-steps that decoded a row (the rest idled: no row left to start)."""
    rows_started: int = 0
    waited_s: float = 0.0
    """Host time blocked on the device for a step's tokens (on a GPU): near the whole time when
    the device sets the pace, near zero when the host does (it then queues each step late). On
    a CPU the step runs in the host's own time: near zero."""
    started_rows_s: float = 0.0
    """Host time starting rows: prompts' forwards (one per distinct prompt) and cache copies."""
    prompts_forwarded: int = 0
    prompt_forward_s: float = 0.0
    """Of ``started_rows_s``, the host time of the prompts' forwards (capturing each new padded
    length included) and of drawing the first tokens of all the rows of each; the rest is
    copying a forwarded prompt and a row's first token and uniforms into its slot."""
    seconds: float = 0.0

    def add(self, other: StepTally) -> None:
        """Count ``other``'s steps too (another rank's): every figure summed, ``slots`` the
        widest; ``ms_per_step`` is then the ranks' mean."""
        summed = ("steps", "busy_slot_steps", "rows_started", "prompts_forwarded", "waited_s",
                  "started_rows_s", "prompt_forward_s", "seconds")  # fmt: skip
        for name in summed:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.slots = max(self.slots, other.slots)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "slots": self.slots,
            "steps": self.steps,
            "slot_occupancy": round(self.busy_slot_steps / max(1, self.steps * self.slots), 4),
            "rows_started": self.rows_started,
            "ms_per_step": round(1e3 * self.seconds / max(1, self.steps), 3),
            "waited_on_device_s": round(self.waited_s, 3),
            "starting_rows_s": round(self.started_rows_s, 3),
            "prompts_forwarded": self.prompts_forwarded,
            "prompt_forward_s": round(self.prompt_forward_s, 3),
            "seconds": round(self.seconds, 3),
        }


@torch.inference_mode()
def decode_rows(
    model: torch.nn.Module,
    rows: Sequence[Row],
    *,
    slots: int,
    sampling: Sampling = Sampling(),
    on_done: Callable[[int, Completion], None] | None = None,
    tally: StepTally | None = None,
    **steps: bool | None,
) -> list[Completion]:
    """Every row's completion, decoded ``slots`` rows at a time with continuous batching: a slot
    whose row ends takes the next row at once (its prompt's keys and values copied in, a prompt
    forwarded once for all the rows that continue it), so a step never waits for a batch's
    longest row. Each slot sits at its own position (``StaticDecoder.chain_rows``). ``on_done(i,
    completion)`` hears of row ``i`` as soon as it ends; ``steps``: ``cuda_graphs``,
    ``compiled``, ``fused`` (``wmtp.models.kv_cache.make_decoder``).

    The next step is queued before the host reads this step's tokens, so the device works while
    the host checks the stop rules; it is skipped when every row ends at these tokens by its
    limit, so a row takes the steps a read-then-step loop takes, plus one when it ends early
    (EOS, stop string)."""
    results: list[Completion | None] = [None] * len(rows)

    def done(i: int, completion: Completion) -> None:
        results[i] = completion
        if on_done is not None:
            on_done(i, completion)

    began = time.perf_counter()
    tally = tally if tally is not None else StepTally()
    waiting = collections.deque(range(len(rows)))
    decoding = any(r.limit > 0 for r in rows)
    batch = _Slots(model, rows, slots, sampling, steps, tally) if decoding else None
    while True:
        starting: list[tuple[int, Row]] = []  # the waiting rows the free slots take, together
        while waiting and (rows[waiting[0]].limit == 0 or batch.free(len(starting))):  # type: ignore[union-attr]
            i = waiting.popleft()
            if rows[i].limit == 0:
                done(i, Completion([], "", "length"))
            else:
                starting.append((i, rows[i]))
        if starting:
            batch.start(starting)  # type: ignore[union-attr]
        if batch is None or not batch.busy():
            break
        for i, completion in batch.advance():
            done(i, completion)
    tally.seconds += time.perf_counter() - began
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@dataclass
class _Prompt:
    """A prompt forwarded once for all the rows that continue it (``members``: row index ->
    its place among them): the one-row decoder holding its keys and values, and every such
    row's first token (``first_R``) and, sampled, uniforms (``uniforms_RT``), drawn together at
    the forward; a row start then only gathers its own."""

    key: tuple[int, ...]
    prefix: object
    members: dict[int, int]
    first_R: torch.Tensor
    uniforms_RT: torch.Tensor | None


class _Slots:
    """The rows decoding together: a fixed-shape decoder of ``slots`` rows (keeping head 1), the
    row each slot holds and its tokens so far, and on the device each slot's next token (drawn,
    not yet read), position and random numbers. Each step draws the tokens after it as its tail
    (``NextTokens``); a row's first token comes from its prompt's forward (``_Prompt``)."""

    def __init__(
        self, model, rows: Sequence[Row], slots: int, sampling: Sampling, steps: dict,
        tally: StepTally,
    ):  # fmt: skip
        from wmtp.models.kv_cache import make_decoder

        self.model, self.rows, self.sampling, self.tally = model, rows, sampling, tally
        tally.slots = slots
        self.device = next(model.parameters()).device
        decoding = [r for r in rows if r.limit > 0]
        max_len = max(len(r.prompt) + r.limit for r in decoding)
        self.decoder = make_decoder(model, slots, max_len, [1], rows_apart=True, **steps)
        self.held: list[tuple[int, Row] | None] = [None] * slots
        self.generated: list[list[int]] = [[] for _ in range(slots)]
        self.next_B = self.decoder.fed(1)[:, 0]  # each slot's next token: the next step's input
        self.pick = NextTokens(sampling)
        width = max(r.limit for r in decoding)  # a row's uniforms: one a token
        self.uniforms_BT = torch.zeros(slots, width, device=self.device)
        self.drawn_B = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.reader = TokenReader(slots, self.device)
        self.sharing: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for i, row in enumerate(rows):  # the rows each prompt's forward serves
            if row.limit > 0:
                self.sharing[tuple(row.prompt)].append(i)
        self._prompt: _Prompt | None = None

    def busy(self) -> bool:
        return any(h is not None for h in self.held)

    def free(self, taken: int = 0) -> bool:
        """Whether a slot is free besides ``taken`` of them (rows about to start)."""
        return sum(h is None for h in self.held) > taken

    def start(self, started: Sequence[tuple[int, Row]]) -> None:
        """Rows ``(i, row)`` into free slots, together: each prompt's keys and values copied
        into all of its rows' slots at once (every layer in one copy per stacked cache), their
        positions, random numbers and first tokens (drawn for all of a prompt's rows at its
        forward) set for the group in one operation each: a row start is about ten device
        operations."""
        began = time.perf_counter()
        free = [b for b, held in enumerate(self.held) if held is None]
        assert len(started) <= len(free), (len(started), len(free))
        placed = list(zip(free[: len(started)], started, strict=True))
        for _, group in itertools.groupby(placed, key=lambda placed: placed[1][1].prompt):
            self._start_group(list(group))
        for b, (i, row) in placed:
            self.held[b], self.generated[b] = (i, row), []
        self.tally.rows_started += len(placed)
        self.tally.started_rows_s += time.perf_counter() - began

    def _start_group(self, placed: list[tuple[int, tuple[int, Row]]]) -> None:
        """Rows of one prompt into slots ``b``: ``[(b, (i, row)), ...]``."""
        prompt = self._forwarded(placed[0][1][1].prompt)
        where = [[b for b, _ in placed], [prompt.members[i] for _, (i, _) in placed]]
        slots_G, members_G = on_device(where, self.device).unbind(0)
        self.decoder.load_rows(slots_G, prompt.prefix)
        # index_fill_, not ``[slots_G] = scalar``: torch 2.11 copies a Python scalar to the
        # device from pageable memory there, waiting for every step queued before
        self.decoder.positions.index_fill_(0, slots_G, len(prompt.key))
        if prompt.uniforms_RT is not None:
            self.uniforms_BT[slots_G] = prompt.uniforms_RT[members_G]
            self.drawn_B.index_fill_(0, slots_G, 1)  # the first uniform drew the first token
        self.next_B[slots_G] = prompt.first_R[members_G]

    def advance(self) -> list[tuple[int, Completion]]:
        """Queue the read of every slot's next token and the step after it (where a row goes
        on: it draws the tokens after those), then read them: the rows that ended, with their
        completions; their slots are free."""
        self.reader.start(self.next_B)
        if self._another_step_needed():  # draws the next tokens over next_B, moves every slot
            inputs = () if self.sampling.greedy else (self._next_uniforms(),)
            self.decoder.chain_rows(1, heads=[1], tail=self.pick, inputs=inputs)
        self.tally.steps += 1
        self.tally.busy_slot_steps += sum(h is not None for h in self.held)
        waiting = time.perf_counter()
        tokens = self.reader.tokens()
        self.tally.waited_s += time.perf_counter() - waiting
        ended = []
        for b, token in enumerate(tokens):
            if self.held[b] is None:
                continue
            i, row = self.held[b]
            self.generated[b].append(token)
            completion = row.stop_rule.finished(self.generated[b], row.limit)
            if completion is not None:
                ended.append((i, completion))
                self.held[b] = None
        return ended

    def _next_uniforms(self) -> torch.Tensor:
        """Each slot's next uniform, ``[B]`` (a row's t-th token draws with its t-th)."""
        uniforms_B = self.uniforms_BT.gather(1, self.drawn_B[:, None]).squeeze(1)
        self.drawn_B.add_(1).clamp_(max=self.uniforms_BT.shape[1] - 1)
        return uniforms_B

    def _another_step_needed(self) -> bool:
        """Whether a row may go on after the tokens being read: one whose limit lies beyond
        them (a row at its limit ends there, whatever the tokens are)."""
        return any(
            held is not None and len(tokens) + 1 < held[1].limit
            for held, tokens in zip(self.held, self.generated, strict=True)
        )

    def _forwarded(self, prompt: list[int]) -> _Prompt:
        """``prompt`` forwarded in a one-row decoder of its own (the slots' decoder's prompt
        step, captured where its steps are), and the first tokens of all the rows that
        continue it drawn from its last logits, each with its row's first uniform. The last
        prompt's is kept: a problem's samples follow one another."""
        from wmtp.models.kv_cache import StaticDecoder

        key = tuple(prompt)
        if self._prompt is not None and self._prompt.key == key:
            return self._prompt
        began = time.perf_counter()
        slots = self.decoder
        prefix = StaticDecoder(
            self.model, 1, len(prompt), [1], cuda_graphs=slots.cuda_graphs, compiled=False,
            fused=slots.fused, prefix=True,
        )  # fmt: skip
        last_V = prefix.prefill(on_device([prompt], self.device), heads=[1], last=True)[0, -1, 0]
        members = self.sharing[key]
        uniforms_RT = self._uniforms(members)
        self._prompt = _Prompt(
            key, prefix, {i: r for r, i in enumerate(members)},
            self._first_tokens(last_V, uniforms_RT, len(members)), uniforms_RT,
        )  # fmt: skip
        self.tally.prompts_forwarded += 1
        self.tally.prompt_forward_s += time.perf_counter() - began
        return self._prompt

    def _uniforms(self, members: list[int]) -> torch.Tensor | None:
        """Rows ``members``' uniforms, ``[R, width]`` on the device, each row's first ``limit``
        from a generator seeded by its ``seed`` (its tokens are its own); ``None`` greedy."""
        if self.sampling.greedy:
            return None
        drawn_RT = torch.zeros(len(members), self.uniforms_BT.shape[1])
        for r, i in enumerate(members):
            limit, seed = self.rows[i].limit, self.rows[i].seed
            drawn_RT[r, :limit] = torch.rand(limit, generator=torch.Generator().manual_seed(seed))
        return on_device(drawn_RT, self.device)

    def _first_tokens(self, last_V, uniforms_RT: torch.Tensor | None, rows: int) -> torch.Tensor:
        """``rows`` first tokens from a prompt's last logits, each with its row's first uniform;
        at most a batch of slots' rows at once (sampling's memory grows with the rows)."""
        chunk, firsts = len(self.held), []
        for at in range(0, rows, chunk):
            n = min(chunk, rows - at)
            uniforms_G = None if uniforms_RT is None else uniforms_RT[at : at + n, 0]
            firsts.append(sample_next(last_V.expand(n, -1), self.sampling, uniforms_G))
        return torch.cat(firsts)


class TokenReader:
    """Reads a step's tokens to the host without waiting for the work queued after them: on
    CUDA a copy into pinned memory and an event, so the next step runs on the GPU while the host
    checks stop rules (the one read per step). Elsewhere a plain copy."""

    def __init__(self, shape: int | tuple[int, ...], device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.empty(shape, dtype=torch.long, pin_memory=self.cuda)
        self.copied = torch.cuda.Event() if self.cuda else None

    def start(self, tokens_B: torch.Tensor) -> None:
        """Queue the copy of ``tokens_B``."""
        self.host.copy_(tokens_B, non_blocking=self.cuda)
        if self.copied is not None:
            self.copied.record(torch.cuda.current_stream(tokens_B.device))

    def tokens(self) -> list:
        """The tokens of the last ``start`` (a list, nested as their shape), once copied."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.host.tolist()


__all__ = [
    "Completion",
    "NextTokens",
    "Row",
    "Sampling",
    "StepTally",
    "StopRule",
    "decode_rows",
    "generate",
    "next_token_probs",
    "next_token_view",
    "running_sum",
    "sample_next",
]
