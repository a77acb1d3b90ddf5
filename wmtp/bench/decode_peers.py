"""Decoding against its limit and its peer: the weight-bandwidth bound, and Hugging Face generate.

Plain decoding reads every weight of the next-token path once per step (the trunk, head 1's
layer, the final norm and the unembedding; one embedding row, left out), so
``bandwidth / weight bytes`` bounds its tokens/s at batch 1. The bandwidth is measured on the
device (a large device-to-device copy, bytes read plus written: what the memory really gives),
and the datasheet figure is stated beside it.

The peer is ``transformers``' ``LlamaForCausalLM`` of exactly the shape plain decoding runs
(:func:`wmtp.eval.generate.next_token_view`: one head), random weights in the model's dtype,
decoding with ``generate`` exactly ``new_tokens`` tokens (no end-of-sequence), at batch 1 and at
batch ``batch`` (sampled as the recipes evaluate: ``n_samples`` rows of one prompt), in each of
its settings, the best of which is the peer: its dynamic cache; and on CUDA its static cache,
once with ``generate`` compiling its decoding forward itself (transformers' default for a static
cache: ``CompileConfig``, ``mode="reduce-overhead"``, CUDA graphs), and once with one
``StaticCache`` made for the side and handed to every call (reset before each), ``generate``
compiling: transformers 5.2x makes a new static cache in every call, whose new tensors a
compiled forward's CUDA graphs must be recorded for again; a cache kept across calls is the
setting that replays them. The forward compiled by hand (``fullgraph=True``, CUDA graphs,
``generate``'s own compilation off), as the transformers inference guide long set it up, is not
a setting any more: with transformers 5.25 and torch 2.11 (H200, 2026-12-04) its static cache
adds to a length tensor inside the forward, which CUDA graph trees refuse ("tensor output of
CUDAGraphs ... overwritten"), and with a step marked before each call the process died of a
segmentation fault. wmtp's side is ``wmtp.eval.generate.generate``, as
``wmtp eval`` calls it.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
from collections.abc import Callable

import torch

from wmtp.bench.timing import wall_seconds_repeated
from wmtp.eval.generate import Sampling, StopRule, generate, next_token_view
from wmtp.models.args import HBM_TB_PER_S, datasheet


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of weights one plain decoding step reads: head 1's path without the embedding."""
    view = next_token_view(model)
    embedding = {id(p) for p in view.tok_embeddings.parameters()}
    return sum(p.numel() * p.element_size() for p in view.parameters() if id(p) not in embedding)


def copy_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 10) -> float | None:
    """Measured device memory bandwidth in bytes/s (median of ``repeats`` copies of ``gib`` GiB,
    read plus written); ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    del source, target
    return 2 * gib * 2**30 / sorted(seconds)[len(seconds) // 2]


def bandwidth_figures(model: torch.nn.Module, plain_tokens_per_s: float) -> dict:
    """The weight-bandwidth limit of batch-1 plain decoding and the fraction of it reached."""
    device = next(model.parameters()).device
    weight_bytes = weight_bytes_per_step(model)
    measured = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    sheet = datasheet(HBM_TB_PER_S, name) if name else None
    limit = measured / weight_bytes if measured else None
    return {
        "weight_bytes_per_step": weight_bytes,
        "bandwidth": "measured: a 1 GiB device-to-device copy, bytes read + written",
        "measured_tb_per_s": round(measured / 1e12, 3) if measured else None,
        "datasheet_tb_per_s": sheet[0] if sheet else None,
        "plain_tokens_per_s_limit": round(limit, 1) if limit else None,
        "plain_fraction_of_limit": round(plain_tokens_per_s / limit, 4) if limit else None,
    }


def hf_peer(model: torch.nn.Module) -> torch.nn.Module:
    """A random ``LlamaForCausalLM`` of plain decoding's shape, in the model's dtype and device,
    that decodes from its KV cache. ``hf_llama`` builds the training peer, cache off; its
    ``generation_config`` copies that at construction, and ``generate`` reads it there: with the
    model's config alone switched on, every step re-ran the whole sequence (the figures of
    2026-12-02 to 12-04 measured that peer)."""
    from wmtp.bench.hf_peer import hf_llama

    view = next_token_view(model)
    args = dataclasses.replace(view.args, n_future_tokens=1)
    first = next(model.parameters())
    peer = hf_llama(args, "sdpa", dtype=first.dtype, device=first.device)
    peer.config.use_cache = peer.generation_config.use_cache = True
    return peer.eval()


def _hf_generate(peer, prompt_BS: torch.Tensor, new_tokens: int, sampling: Sampling, **extra):
    options = {"do_sample": False}
    if not sampling.greedy:
        options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    return peer.generate(
        prompt_BS,
        attention_mask=torch.ones_like(prompt_BS),
        use_cache=True,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
        top_k=None,
        **options,
        **extra,
    )


def peer_figures(
    model: torch.nn.Module,
    prompt: list[int],
    new_tokens: int,
    batch: int,
    sampling: Sampling,
) -> dict:
    """tokens/s of wmtp's ``generate`` and of each Hugging Face peer at batch 1 (greedy) and at
    ``batch`` rows of ``prompt`` (``sampling``): each the median of ``TIMED_CALLS`` calls after
    a warm-up call (``_side_figures``)."""
    device = next(model.parameters()).device
    never = StopRule(lambda ids: "", stop=(), eos_id=None)

    def wmtp_side(rows: int, drawn: Sampling) -> Callable[[], object]:
        generator = None if drawn.greedy else torch.Generator(device=device).manual_seed(0)
        return lambda: generate(
            model, [prompt] * rows, never, max_new_tokens=new_tokens, sampling=drawn,
            generator=generator, batch_size=rows,
        )  # fmt: skip

    sides: dict[str, Callable[[int, Sampling], Callable[[], object]] | str] = {"wmtp": wmtp_side}
    for name, setting in _hf_settings(hf_peer(model), device).items():
        if isinstance(setting, str):
            sides[name] = setting
            continue

        def hf_side(rows: int, drawn: Sampling, make=setting) -> Callable[[], object]:
            return make(torch.tensor([prompt] * rows, device=device), new_tokens, drawn)

        sides[name] = hf_side
    out: dict[str, dict] = {}
    for name, side in sides.items():
        if isinstance(side, str):
            out[name] = {"not_measured": side}
            continue
        try:
            figures = _side_figures(side, device, len(prompt), batch, sampling)
        except Exception as exc:  # a peer setting this transformers cannot run: said, not fatal
            if name == "wmtp":
                raise
            figures = {"not_measured": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
        out[name] = figures
        print(f"decode peers: {name} {figures}", file=sys.stderr, flush=True)  # progress
    for name, figures in out.items():
        if name != "wmtp" and "not_measured" not in figures:
            for label in ("batch1", f"batch{batch}"):
                key = f"{label}_tokens_per_s"
                out["wmtp"][f"{label}_ratio_vs_{name}"] = round(out["wmtp"][key] / figures[key], 3)
    return {"batch": batch, "sampling": dataclasses.asdict(sampling), "sides": out}


TIMED_CALLS = 3
"""Timed calls per side and batch after the warm-up: the figure is their median."""


def _side_figures(side, device, prompt_len: int, batch: int, sampling: Sampling) -> dict:
    """tokens/s of one side at batch 1 (greedy) and ``batch`` rows (``sampling``): the median
    of ``TIMED_CALLS`` calls after one warm-up call (cache allocation, compilation, CUDA graph
    capture), and their range; the tokens counted are those each call made
    (:func:`new_tokens_of`), never the number asked for, and recorded (``<label>_new_tokens``)."""
    figures = {}
    for label, rows, drawn in (("batch1", 1, Sampling()), (f"batch{batch}", batch, sampling)):
        call = side(rows, drawn)
        call()
        out, seconds = wall_seconds_repeated(device, call, TIMED_CALLS)
        made = new_tokens_of(out, prompt_len)
        figures |= rates(label, made, seconds) | {f"{label}_new_tokens": made}
    return figures


def new_tokens_of(output, prompt_len: int) -> int:
    """The tokens one call generated, prompts left out: wmtp's completions, or Hugging Face
    ``generate``'s ``[rows, prompt + new]`` ids (no row stops early: no end-of-sequence)."""
    if isinstance(output, torch.Tensor):
        return output.shape[0] * (output.shape[1] - prompt_len)
    return sum(len(completion.tokens) for completion in output)


def rates(label: str, tokens: int, seconds: list[float]) -> dict:
    """``<label>_tokens_per_s`` (the median call's) and ``<label>_tokens_per_s_range`` (the
    slowest and the fastest call's) of calls that each made ``tokens`` tokens."""
    per_s = sorted(tokens / s for s in seconds)
    return {
        f"{label}_tokens_per_s": round(statistics.median(per_s), 2),
        f"{label}_tokens_per_s_range": [round(per_s[0], 2), round(per_s[-1], 2)],
    }


CallMaker = Callable[[torch.Tensor, int, Sampling], Callable[[], object]]
"""A peer setting: ``(prompt_BS, new_tokens, sampling)`` -> the ``generate`` call to time."""


def _hf_settings(peer, device: torch.device) -> dict[str, CallMaker | str]:
    """Each Hugging Face setting's calls, or why it is not measured. The compiled ones run
    shallow copies of the peer (the same weights)."""
    import copy

    settings: dict[str, CallMaker | str] = {"hf_dynamic_cache": _generate_calls(peer)}
    compiled_sides = ("hf_static_cache_generate_compiled", "hf_static_cache_kept_generate_compiled")
    if device.type != "cuda":
        return settings | dict.fromkeys(compiled_sides, "a compiled static cache: CUDA only")
    settings[compiled_sides[0]] = _generate_calls(copy.copy(peer), cache_implementation="static")
    settings[compiled_sides[1]] = functools.partial(kept_static_cache_call, copy.copy(peer))
    return settings


def _generate_calls(peer, **extra) -> CallMaker:
    """Calls of the peer's ``generate`` with ``extra`` arguments."""

    def make(prompt_BS: torch.Tensor, new_tokens: int, sampling: Sampling):
        return lambda: _hf_generate(peer, prompt_BS, new_tokens, sampling, **extra)

    return make


def kept_static_cache_call(
    peer, prompt_BS: torch.Tensor, new_tokens: int, sampling: Sampling
) -> Callable[[], object]:
    """A ``generate`` call of ``prompt_BS`` that hands the peer one ``StaticCache``, made here
    and reset before each call, so every call decodes in the same cache tensors. The argument
    is the one the installed transformers' forward takes (``cache`` in 5.2x, else
    ``past_key_values``)."""
    import inspect

    from transformers import StaticCache

    cache = StaticCache(config=peer.config, max_cache_len=prompt_BS.shape[1] + new_tokens)
    forward_args = inspect.signature(type(peer).forward).parameters
    name = "cache" if "cache" in forward_args else "past_key_values"

    def call():
        cache.reset()
        return _hf_generate(peer, prompt_BS, new_tokens, sampling, **{name: cache})

    return call


__all__ = [
    "bandwidth_figures",
    "copy_bandwidth",
    "new_tokens_of",
    "peer_figures",
    "rates",
    "weight_bytes_per_step",
]
