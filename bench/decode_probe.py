"""Whole decoding calls timed in one process: ``generate`` of ``llama-1b-bench`` (random
weights, 256 new tokens) at 20 rows sampled at 0.2 with top-p 0.95 and without, 20 rows greedy
and 1 row greedy, from one 256-token prompt; with ``--long`` also 1 row and 20 sampled rows
from a prompt that fills the context with the new tokens (1,792 tokens: a 2,048-position
cache). Five timed calls each after a warm-up (their median and range as ``wmtp bench decode
--peers`` reports them); the first 64 greedy tokens of each batch-1 case. One GPU; prints one
JSON line, and each figure to stderr as it is measured.

    python3 bench/decode_probe.py LABEL [--attention flex|sdpa|math] [--kv two|one] [--long]
    python3 bench/decode_probe.py dry --device cpu --flavour tiny --prompt-len 8 --new-tokens 4

``--attention``: the compiled step's attention over the cache (``kv_cache.row_attention``,
replaced in this process only): ``flex`` as shipped (FlexAttention, each row's filled blocks);
``sdpa`` (sdpa with a boolean mask over the whole cache, the shipped fallback); ``math``
(``math_attention``, checked against the masked sdpa first). ``--kv one``: each cache's keys
and values in one tensor, a plain block's new ones written by one ``index_put``
(``one_kv_tensor``). An earlier package beside this one, in the same call:
``PYTHONPATH=DIR:$PYTHONPATH python3 -P bench/decode_probe.py before`` (DIR/wmtp from
``git archive REV wmtp | tar -x -C DIR``).

``--inductor KEY=VALUE`` (repeated): an Inductor setting for every compilation in this
process, e.g. ``triton.enable_pdl=True`` (Hopper's programmatic dependent launch: a kernel
starts while the one before it finishes) or ``combo_kernels=True`` (independent kernels
launched as one). ``--tune all``: Inductor's coordinate-descent tuning for every compiled step
(a one-row product becomes a reduction Inductor generates and tunes; shipped: none, cuBLAS).
``--small-m reduce``: a linear layer of 2 to ``SMALL_M`` rows (a
batch-1 verify step's 4 tokens) as a multiply and a reduction over the weights' rows
(``reduced_linear``), which Inductor generates (with ``--tune all``, tunes) where cuBLAS ran
it. ``--products split``: a linear layer of 1 to ``SPLIT_ROWS`` rows on a GPU as one ``bmm``
over slices of its input dimension whose partial sums the next kernel adds (``split_linear``):
more programs for a short output (``wo``'s 2,048 outputs run as 32 programs of cuBLAS's
64-column kernel). Measured slower (976 against 1,061 tokens/s at batch 1, one H100,
``bench/results/h100_decode_split_20261206``); not shipped.
``--speculative``: then, with the heads rigged to agree (``rig_agreeing_heads``: every
draft accepted), self-speculative greedy decoding at batch 1 against plain, in this process.
``--kv-splits N``: FlexAttention's decoding kernel splits each row's keys into ``N`` parts for
every step (shipped: ``kv_cache.kv_splits``, two programs per multiprocessor: 33 parts at
batch 1 on an H200, most of them past a short context's filled blocks, then combined by two
reductions). ``--profile DIR``: after timing, each batch-1 case's call once more under ``torch.profiler``:
``DIR/KEY.txt`` holds the device timeline per new token (busy, idle, by kind of kernel), the
kernels a step launches, and one step's kernels in order with the idle time before each (the
trace itself is not kept)."""

import argparse
import ast
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._inductor.config

import wmtp
import wmtp.models.kv_cache as kv_cache
from wmtp.bench.decode_peers import rates
from wmtp.bench.timing import wall_seconds_repeated
from wmtp.eval.generate import Sampling, StopRule, generate
from wmtp.eval.speed import model_from_flavour, random_prompts

SHIPPED = kv_cache.row_attention
NEVER = StopRule(lambda ids: "", stop=(), eos_id=None)
"""Rows end at their token budget only."""


def whole_cache(starts_B, S, keys_L, *, skip_blocks):
    return SHIPPED(starts_B, S, keys_L, skip_blocks=False)


def math_attention(starts_B, S, keys_L, *, skip_blocks):
    """Every query of row b over the whole cache, positions past its own masked, the ``G``
    query heads of a key head side by side: ``[B, K, G*S, D] @ [B, K, D, L]``, softmax in fp32,
    times the values; two matrix products and a softmax for Inductor to fuse. The scores leave
    their product in bf16 (the shipped kernels keep them in fp32): a bound on what such an
    attention could gain, not a candidate as it stands."""
    positions_BS = starts_B[:, None] + torch.arange(S, device=starts_B.device)
    hidden_B1SL = (keys_L > positions_BS[:, :, None])[:, None]

    def attend(q_BHSD, k_BKLD, v_BKLD):
        B, H, S, D = q_BHSD.shape
        K, L = k_BKLD.shape[1], k_BKLD.shape[2]
        G = H // K
        scores = q_BHSD.reshape(B, K, G * S, D) @ k_BKLD.transpose(-1, -2)
        scores = scores.float().view(B, K, G, S, L) * D**-0.5
        probs = scores.masked_fill(hidden_B1SL[:, :, None], float("-inf")).softmax(dim=-1)
        out = probs.to(v_BKLD.dtype).view(B, K, G * S, L) @ v_BKLD
        return out.view(B, H, S, D)

    return attend


def check(attention, device) -> float:
    """The largest difference from the masked sdpa on random rows (bf16, GQA 16/8, 3 rows at
    spread positions, 1 and 4 queries)."""
    worst = 0.0
    for S in (1, 4):
        g = torch.Generator(device=device).manual_seed(S)
        q, k, v = (
            torch.randn(3, n, s, 128, generator=g, device=device, dtype=torch.bfloat16)
            for n, s in ((16, S), (8, 512), (8, 512))
        )
        starts = torch.tensor([0, 200, 511 - S + 1], device=device)
        keys = torch.arange(512, device=device)
        want = SHIPPED(starts, S, keys, skip_blocks=False)(q, k, v)
        got = attention(starts, S, keys, skip_blocks=True)(q, k, v)
        worst = max(worst, (got.float() - want.float()).abs().max().item())
    return worst


def one_kv_tensor() -> None:
    """Every cache's keys and values as halves of one ``[B, L, 2, K, D]`` tensor, and the
    plain blocks' new keys (RoPE applied) and values written into it by one ``index_put``
    where two wrote them (``masked_block`` and ``KVCache`` replaced in this process only;
    every other writer goes through the halves, which are views)."""

    def init(self, batch, max_len, kv_heads, head_dim, *, dtype, device):
        self.kv = torch.zeros(batch, max_len, 2, kv_heads, head_dim, dtype=dtype, device=device)
        self.k_BSKD, self.v_BSKD = self.kv.unbind(2)
        self.fused = None

    def rows(self, start, count):
        view = object.__new__(kv_cache.KVCache)
        view.kv = self.kv[start : start + count]
        view.k_BSKD, view.v_BSKD = view.kv.unbind(2)
        view.fused = None
        return view

    def masked_block(block, x_BSD, rope, cache, positions_BS, attend):
        normed = block.attention_norm(x_BSD)
        q_BSHD, k_BSKD, v_BSKD = kv_cache._project_qkv(block, normed, rope, cache.fused)
        rows_B1 = torch.arange(len(positions_BS), device=positions_BS.device)[:, None]
        cache.kv[rows_B1, positions_BS] = torch.stack([k_BSKD, v_BSKD], dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q_BSHD, cache.k_BSKD, cache.v_BSKD))
        out_BHSD = attend(q, k, v)
        h_BSD = x_BSD + block.attention.wo(out_BHSD.transpose(1, 2).flatten(2))
        return h_BSD + kv_cache._feed_forward(block, block.ffn_norm(h_BSD), cache.fused)

    kv_cache.KVCache.__init__, kv_cache.KVCache.rows = init, rows
    kv_cache.masked_block = masked_block


SMALL_M = 8
"""``--small-m reduce`` replaces linear layers of at most this many rows (and at least 2)."""

LINEAR = torch.nn.functional.linear


def reduced_linear(x, weight, bias=None):
    """``F.linear`` for 2 to ``SMALL_M`` rows: ``[N, M]`` sums over each weight row of its
    products with the rows, in fp32 (each weight read once for all M, the M outputs of one
    weight row side by side), then transposed; anything else as ``F.linear``."""
    rows = x.numel() // max(1, x.shape[-1])
    if not 2 <= rows <= SMALL_M:
        return LINEAR(x, weight, bias)
    x_MK = x.reshape(rows, x.shape[-1]).float()
    out_NM = (weight.float()[:, None, :] * x_MK[None]).sum(-1)
    out = out_NM.t().reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)
    return out if bias is None else out + bias


SPLIT_ROWS = 8
"""``--products split`` splits products of at most this many rows."""
SPLIT_TILE = 64
"""Output columns per program of cuBLAS's batch-1 products (its ``64x8`` kernels)."""
PROCESSORS = [0]
"""The GPU's multiprocessors, read before anything is compiled (``--products split``)."""


def split_parts(out_features: int, in_features: int, processors: int) -> int:
    """Slices of the input dimension for a short product: doubled (to 8 at most) while its
    programs (one per ``SPLIT_TILE`` outputs and slice) would not cover ``processors``, each
    slice a multiple of 64 inputs. llama-1b-bench on 132 multiprocessors: q/k/v 4, wo 8, w1/w3
    1, w2 8, the unembedding 1."""
    parts = 1
    while (
        parts < 8
        and -(-out_features // SPLIT_TILE) * parts < processors
        and in_features % (2 * parts * 64) == 0
    ):
        parts *= 2
    return parts


def split_linear(x, weight, bias=None):
    """``F.linear`` of 1 to ``SPLIT_ROWS`` rows on a GPU as ``split_parts`` products over slices
    of the input dimension: one ``bmm`` on the weight viewed ``[parts, in / parts, out]`` (no
    copy), the partial sums added in fp32 (Inductor unrolls a sum of 8 or fewer terms into the
    kernel that reads it: RoPE, the residual add, SwiGLU); anything else as ``F.linear``."""
    rows = x.numel() // max(1, x.shape[-1])
    out_features, in_features = weight.shape
    parts = 1
    if x.is_cuda and 1 <= rows <= SPLIT_ROWS and bias is None:
        parts = split_parts(out_features, in_features, PROCESSORS[0])
    if parts == 1:
        return LINEAR(x, weight, bias)
    x_kMI = x.reshape(rows, parts, in_features // parts).transpose(0, 1)
    w_kIO = weight.view(out_features, parts, in_features // parts).permute(1, 2, 0)
    summed_MO = torch.bmm(x_kMI, w_kIO).sum(0, dtype=torch.float32)
    return summed_MO.to(x.dtype).view(*x.shape[:-1], out_features)


def set_inductor(setting: str) -> tuple[str, object]:
    """``KEY=VALUE`` (``KEY`` a dotted path under ``torch._inductor.config``, ``VALUE`` a Python
    literal) set for this process."""
    key, _, text = setting.partition("=")
    value = ast.literal_eval(text)
    *path, name = key.split(".")
    section = torch._inductor.config
    for part in path:
        section = getattr(section, part)
    assert hasattr(section, name), f"no Inductor setting {key}"
    setattr(section, name, value)
    return key, value


def profile_case(call, new: int, path: Path, device: torch.device) -> dict:
    """``call`` under torch.profiler; its device timeline per new token (``wmtp.bench.trace``)
    and one middle step's kernels in order, written to ``path``; the figures returned (none on
    a CPU: no device kernels)."""
    from torch.profiler import ProfilerActivity, profile

    from wmtp.bench.trace import device_kernels, gpu_timeline, timeline_text

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        call()
        if cuda:
            torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        timeline, kernels = gpu_timeline(trace), device_kernels(trace)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [timeline_text(timeline, per=new)]
    if not kernels:
        path.write_text("\n".join(lines))
        return {}
    per_step = round(len(kernels) / new)
    middle = kernels[len(kernels) // 2 : len(kernels) // 2 + per_step]
    lines += [
        f"{per_step} kernels a new token; one step's from the call's middle (us: idle before, run):"
    ]
    previous_end = middle[0]["ts"]
    for k in middle:
        lines.append(f"  {k['ts'] - previous_end:6.1f} {k['dur']:7.1f}  {k['name'][:90]}")
        previous_end = k["ts"] + k["dur"]
    path.write_text("\n".join(lines) + "\n")
    return {
        "step_window_us": round(timeline["window_us"] / new, 1),
        "step_busy_us": round(timeline["busy_us"] / new, 1),
        "kernels_per_step": per_step,
    }


def speculative_case(model, prompt, new: int, device, out: dict, label: str) -> None:
    """Agreeing heads: self-speculative greedy decoding at batch 1 against plain (medians of 5
    timed calls after a warm-up each), tokens per forward, into ``out``."""
    from wmtp.eval.speculative import speculative_generate
    from wmtp.eval.speed import rig_agreeing_heads

    rig_agreeing_heads(model)

    def plain():
        return generate(model, [prompt], NEVER, max_new_tokens=new, batch_size=1)

    def speculative():
        return speculative_generate(model, prompt, NEVER, max_new_tokens=new)

    firsts = {}
    for key, call in (("agreeing_plain_b1", plain), ("agreeing_speculative_b1", speculative)):
        firsts[key] = call()
        out |= rates(key, new, wall_seconds_repeated(device, call, 5)[1])
        print(label, key, out[f"{key}_tokens_per_s"], file=sys.stderr, flush=True)
    completion, stats = firsts["agreeing_speculative_b1"]
    out["agreeing_identical_tokens"] = completion.tokens == firsts["agreeing_plain_b1"][0].tokens
    out["agreeing_tokens_per_forward"] = round(stats.tokens_per_forward, 3)
    plain_rate = out["agreeing_plain_b1_tokens_per_s"]
    out["agreeing_speedup"] = round(out["agreeing_speculative_b1_tokens_per_s"] / plain_rate, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label")
    parser.add_argument("--attention", choices=("flex", "sdpa", "math"), default="flex")
    parser.add_argument("--kv", choices=("two", "one"), default="two")
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--flavour", default="llama-1b-bench")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the code path")
    parser.add_argument("--cases", default="", help="comma-separated case keys (default: all)")
    parser.add_argument("--tune", choices=("none", "all"), default="none")
    parser.add_argument("--small-m", choices=("cublas", "reduce"), default="cublas")
    parser.add_argument("--products", choices=("whole", "split"), default="whole")
    parser.add_argument("--speculative", action="store_true")
    parser.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    parser.add_argument("--kv-splits", type=int, default=0, metavar="N")
    args = parser.parse_args()
    device = torch.device(args.device)
    out = {"label": args.label, "wmtp": wmtp.__file__, "attention": args.attention, "kv": args.kv}
    out |= {"tune": args.tune, "small_m": args.small_m, "products": args.products}
    out["inductor"] = dict(set_inductor(setting) for setting in args.inductor)
    if args.tune == "all":
        torch._inductor.config.coordinate_descent_tuning = True
    if args.small_m == "reduce":
        torch.nn.functional.linear = reduced_linear
    if args.products == "split":
        if device.type == "cuda":
            PROCESSORS[0] = torch.cuda.get_device_properties(device).multi_processor_count
        torch.nn.functional.linear = split_linear
    if args.kv_splits:
        out["kv_splits"] = args.kv_splits
        kv_cache.kv_splits = lambda row_heads, processors: args.kv_splits
    if args.kv == "one":
        one_kv_tensor()
    if args.attention != "flex":
        attention = whole_cache if args.attention == "sdpa" else math_attention
        out["max_abs_diff_vs_masked_sdpa"] = check(attention, device)
        kv_cache.row_attention = attention
    model = model_from_flavour(
        args.flavour, n_future_tokens=4, dtype="bfloat16", device=args.device
    )
    vocab, new = model.args.vocab_size, args.new_tokens
    short = random_prompts(vocab, 1, args.prompt_len)[0]
    cases = [
        ("b20_t0.2_p0.95", short, 20, Sampling(0.2, 0.95)),
        ("b20_t0.2_p1.0", short, 20, Sampling(0.2, 1.0)),
        ("b20_t0.0_p1.0", short, 20, Sampling()),
        ("b1_t0.0_p1.0", short, 1, Sampling()),
    ]
    if args.long:
        long = random_prompts(vocab, 1, model.args.max_seq_len - new, seed=1)[0]
        cases += [("long_b1", long, 1, Sampling()), ("long_b20", long, 20, Sampling(0.2, 0.95))]
    if args.cases:
        cases = [case for case in cases if case[0] in args.cases.split(",")]
    with torch.inference_mode():
        for key, prompt, rows, sampling in cases:
            gen = None if sampling.greedy else torch.Generator(device=device).manual_seed(0)

            def call(prompt=prompt, rows=rows, sampling=sampling, gen=gen):
                return generate(
                    model, [prompt] * rows, NEVER, max_new_tokens=new, sampling=sampling,
                    generator=gen, batch_size=rows,
                )  # fmt: skip

            began = time.perf_counter()
            first = call()
            out[f"{key}_first_call_s"] = round(time.perf_counter() - began, 1)  # with compiling
            if rows == 1:  # the greedy tokens, to hold the variants' outputs side by side
                out[f"{key}_tokens"] = first[0].tokens[:64]
            out |= rates(key, rows * new, wall_seconds_repeated(device, call, 5)[1])
            print(args.label, key, out[f"{key}_tokens_per_s"], file=sys.stderr, flush=True)
            if args.profile and rows == 1:
                path = args.profile / f"{args.label}_{key}.txt"
                figures = profile_case(call, new, path, device)
                out |= {f"{key}_{name}": value for name, value in figures.items()}
        if args.speculative:
            speculative_case(model, short, new, device, out, args.label)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
