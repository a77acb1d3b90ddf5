"""``wmtp bench peers``: wmtp against the peers a user would pick, each at its best micro-batch.

Two shapes (:data:`SHAPES`), each a wmtp recipe made here, from which every side takes its shape:
``full1b``, the suite's 1B full fine-tune (:func:`wmtp.bench.suite.suite_recipe`: compiled
blocks, bf16, seq 2048), and ``lora7b``, the production LoRA recipe itself
(``recipes/baseline.toml``: Llama-2-7B MTP, LoRA r64 on wq wk wv wo w1 w2 w3, activation
checkpointing, bf16, seq 2048; wmtp also with ``parallel.compile = true``) with random weights, a byte tokenizer and no accumulation.
The sides (:data:`SIDES`): wmtp's trainer through ``wmtp bench step``'s :func:`bench_step`, with
one head and with four (at ``full1b`` also one head with ``parallel.float8``); the Hugging Face
peers of :mod:`wmtp.bench.hf_peer` (plain, compiled, with Liger kernels; PEFT LoRA for
``lora7b``, each with gradient checkpointing and without: Hugging Face checkpoints every layer
or none, so a recipe that recomputes one block in k has no like setting, and the peer's best is
whichever is faster), built as the recipe's model with one head; at ``full1b`` also torchtitan's
own Llama3 at the same shape, at its trainer's setting on one GPU (:mod:`wmtp.bench.titan_peer`:
torchtitan 0.2.2, its per-block compile, bf16 autocast over fp32 weights, compiled
cross-entropy; run last). A side is a name and its
settings, ``+``-separated (:func:`settings`).
Each side is swept over micro-batches until one runs out of memory (:mod:`wmtp.bench.sweep`).

One MFU formula for every side (:data:`MFU_FORMULA`) and one memory measure
(:data:`MEMORY_MEASURE`); each row also records what was still allocated when its side began
(``allocated_before_side_gib``: ~0 unless an earlier side in the process left memory behind).
Results go to ``<out>/<shape>.json``, rewritten after every row; a later call for other sides
of the same shape adds its rows to the same file.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from wmtp.bench import hf_peer
from wmtp.bench.sweep import (
    Row,
    best,
    error_row,
    free_memory,
    installed_version,
    measured_row,
    sweep,
)
from wmtp.bench.timing import shown
from wmtp.errors import WmtpError
from wmtp.parallel import float8

REPO = Path(__file__).resolve().parents[2]
LORA_RECIPE = REPO / "recipes" / "baseline.toml"
MFU_FORMULA = (
    "MFU = tokens/s x training_flops_per_token(args, seq, weight_grads=not lora) / (bf16 peak x "
    "GPUs), the same function (wmtp.models.args.mfu) for every side: 6 FLOPs per weight per token "
    "(2 forward, 2 input gradients, 2 weight gradients), 4 for frozen weights under LoRA (no "
    "weight gradients; the adapters' own FLOPs are not counted), plus causal attention; every head "
    "counts its unembedding at every position (wmtp computes it only at the targets it trains, "
    "the peers at every position); recomputation (activation checkpointing) is never counted; the peak "
    "is the datasheet's dense bf16 figure (wmtp.models.args.BF16_PEAK_TFLOPS)"
)
MEMORY_MEASURE = (
    "peak_memory_gib = the absolute peak of torch.cuda.max_memory_allocated() over the warm-up and "
    "timed steps, reset once the model and optimizer are built: weights, gradients, optimizer "
    "state and activations; the figure `wmtp run` logs as peak_memory_gb"
)


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    micro_batches: tuple[int, ...]
    warmup: int
    repeats: int


SHAPES = {
    "full1b": Shape(
        "full1b",
        "1B full fine-tune: llama-1b-bench (dim 2048, 16 layers, GQA 16/8, vocab 32000), seq 2048, "
        "bf16; wmtp's recipe is the suite's (compiled blocks, no activation checkpointing)",
        (2, 4, 8, 16),
        warmup=3,
        repeats=10,
    ),
    "lora7b": Shape(
        "lora7b",
        "the production LoRA recipe: recipes/baseline.toml (Llama-2-7B MTP, LoRA r64 / alpha 128 / "
        "dropout 0.05 on wq wk wv wo w1 w2 w3, activation checkpointing, bf16, seq 2048) with "
        "random weights, a byte tokenizer and grad_accum_steps = 1",
        (1, 2, 4, 8),
        warmup=2,
        repeats=5,
    ),
}
SIDES = {
    "full1b": {
        "wmtp-1head": "wmtp's trainer (`wmtp bench step`), one head",
        "wmtp-4heads": "wmtp's trainer, four heads (the same 16 layers)",
        "wmtp-1head+float8": "wmtp's trainer, one head, parallel.float8 = true (torchao's "
        "tensorwise float8 in the blocks' linears; CUDA compute capability 8.9+)",
        "hf": "transformers LlamaForCausalLM, sdpa, fp32 weights under bf16 autocast",
        "hf+compile": "the same under torch.compile (whole model)",
        "hf+liger": "the same with Liger kernels (RoPE, RMSNorm, SwiGLU, fused linear CE)",
        "titan": "torchtitan 0.2.2's Llama3 (wmtp.bench.titan_peer), its trainer's setting on "
        "one GPU: parallelize_llama with compile on (apply_compile: each block "
        "torch.compile'd; no FSDP at a world of one, autocast bf16 over fp32 master weights; no "
        "activation checkpointing), sdpa attention (cuDNN, then flash), its compiled "
        "cross-entropy, its fused AdamW and clip_grad_norm_ 1.0",
        "titan+float8": "titan with its float8 training (model.converters quantize.linear.float8: "
        "torchao's tensorwise Float8Linear in every block, output left in bf16 as its Llama3 "
        "recipes filter it; CUDA compute capability 8.9+)",
        "titan+no-compile": "torchtitan's Llama3 eager (no apply_compile, loss not compiled)",
        "titan+float8+no-compile": "titan+float8 eager; on the CPU (tests) torchao emulates float8",
    },
    "lora7b": {
        "wmtp-4heads": "wmtp's trainer on the recipe as written: four heads",
        "wmtp-1head": "wmtp's trainer, the recipe with one head (n_future_tokens = 1)",
        "wmtp-4heads+compile": "wmtp's trainer, four heads, parallel.compile = true (what the "
        'recipe as written, compile = "auto", does on CUDA)',
        "wmtp-1head+compile": "wmtp's trainer, one head, parallel.compile = true",
        "wmtp-4heads+no-checkpointing": "wmtp's trainer, four heads, "
        "parallel.activation_checkpointing = false (the setting of the peers' no-checkpointing "
        "sides; blocks compiled as the recipe says)",
        "wmtp-1head+no-checkpointing": "wmtp's trainer, one head, no activation checkpointing",
        "hf-peft": "transformers + PEFT LoRA (the recipe's r, alpha, dropout, targets), bf16 "
        "frozen weights, gradient checkpointing",
        "hf-peft+compile": "the same under torch.compile (whole model)",
        "hf-peft+liger": "the same with Liger kernels (RoPE, RMSNorm, SwiGLU, fused linear CE)",
        "hf-peft+no-checkpointing": "hf-peft without gradient checkpointing (Hugging Face's "
        "default): nothing recomputed, more memory",
        "hf-peft+compile+no-checkpointing": "hf-peft+compile without gradient checkpointing",
        "hf-peft+liger+no-checkpointing": "hf-peft+liger without gradient checkpointing",
        "wmtp-4heads+float8": "wmtp's trainer on the recipe as written with parallel.float8 = "
        "true (the frozen base linears in torchao's tensorwise float8; adapters in bf16; CUDA "
        "compute capability 8.9+)",
        "wmtp-4heads+no-checkpointing+float8": "wmtp-4heads+float8 without activation "
        "checkpointing",
        "hf-peft+compile+no-checkpointing+float8": "hf-peft+compile+no-checkpointing with "
        "torchao's tensorwise float8 on the frozen base linears (PEFT's base_layer; adapters "
        "and lm_head in bf16), as Accelerate's torchao FP8 backend converts a model's linears",
    },
}


def settings(side: str) -> set[str]:
    """A side's settings: the words after its name (``hf-peft+compile+no-checkpointing``:
    ``{"compile", "no-checkpointing"}``)."""
    return set(side.split("+")[1:])


WMTP_SETTINGS = {
    "compile": "parallel.compile=true",
    "float8": "parallel.float8=true",
    "no-checkpointing": "parallel.activation_checkpointing=false",
}
"""The ``--set`` of a wmtp side's setting (``wmtp-4heads+compile``), on top of the shape's recipe."""


def shape_recipe(shape: str, *, heads: int, micro_batch: int, overrides: Sequence[str] = ()):
    """wmtp's recipe of ``shape`` with ``heads`` heads at ``micro_batch`` (``overrides``: ``--set``
    strings applied last, e.g. tiny sizes on the CPU for tests)."""
    from wmtp.recipe import load_recipe
    from wmtp.recipe.load import Tree, apply_overrides
    from wmtp.recipe.validate import validate_tree

    if shape == "full1b":
        from wmtp.bench.suite import suite_recipe_data

        data = suite_recipe_data("llama-1b-bench", 2048, micro_batch=micro_batch, heads=heads)
        tree = Tree(data, {})
        apply_overrides(tree, overrides)
        return validate_tree(tree, "full1b")
    sets = [
        "model.policy.path=''",
        "tokenizer={kind='byte'}",
        "training.grad_accum_steps=1",
        f"training.micro_batch_size={micro_batch}",
        f"model.policy.n_future_tokens={heads}",
    ]
    return load_recipe(LORA_RECIPE, [*sets, *overrides]).recipe


def peer_args(recipe):
    """The shape every peer trains: the recipe's policy with one head (same total layers)."""
    from wmtp import assembly

    vocab = assembly.tokenizer(recipe).vocab_size
    return replace(recipe.model.policy.model_args(vocab), n_future_tokens=1)


def peer_config(shape: str, side: str, recipe) -> hf_peer.PeerConfig:
    """How ``side`` trains: LoRA at ``lora7b``, gradient checkpointing (every layer) where the
    recipe checkpoints any block and the side does not say ``no-checkpointing``."""
    lora = recipe.model.policy.lora if shape == "lora7b" else None
    wanted = settings(side)
    recipe_recomputes = bool(recipe.parallel.activation_checkpointing)  # True, or every k-th
    recomputes = lora is not None and recipe_recomputes and "no-checkpointing" not in wanted
    return hf_peer.PeerConfig(
        side,
        lora=lora,
        gradient_checkpointing=recomputes,
        compile="compile" in wanted,
        liger="liger" in wanted,
        float8="float8" in wanted,
    )


class Side(Protocol):
    """One side of a comparison: ``measure`` at each micro-batch of the sweep, ``close`` once
    the sweep is done (whatever the side holds between micro-batches is released)."""

    def measure(self, micro_batch: int) -> Row: ...

    def close(self) -> None: ...


class _WmtpSide:
    """wmtp's trainer at one side's recipe, measured at each micro-batch by
    :func:`wmtp.bench.step.bench_step` (each step builds and frees its own trainer)."""

    def __init__(self, side, recipe_at, *, warmup, repeats, device):
        self.side, self.recipe_at, self.device = side, recipe_at, device
        self.warmup, self.repeats = warmup, repeats

    def measure(self, micro_batch: int) -> Row:
        from wmtp.bench.step import bench_step

        recipe = self.recipe_at(micro_batch)
        r = bench_step(
            recipe, label=self.side, warmup=self.warmup, repeats=self.repeats, device=self.device
        )
        c = r.config
        return measured_row(
            self.side,
            micro_batch,
            tokens_per_step=round(r.tokens_per_s * r.step.median_ms / 1e3),
            step=r.step,
            flops_per_token=c["flops_per_token"],
            peak_tflops=r.peak_tflops,
            peak_memory_gib=r.peak_memory_gib,
            n_future_tokens=c["n_future_tokens"],
            lora=c["lora"],
            activation_checkpointing=c["activation_checkpointing"],
            compile=c["compile"],
            float8=recipe.parallel.float8_scaling(),
            attention=c["attention"],
            mtp_loss=c["mtp_loss"],
            warmup=self.warmup,
            repeats=self.repeats,
        )

    def close(self) -> None:
        """Nothing held between micro-batches."""


class _PeerSide:
    """A peer built once (at its first micro-batch) and measured at each micro-batch: a Hugging
    Face peer (:mod:`wmtp.bench.hf_peer`) or torchtitan's (:mod:`wmtp.bench.titan_peer`), each
    module's ``build_side`` and ``measure``; ``close`` (when the side is done) drops the peer."""

    def __init__(self, args, config, seq_len, *, warmup, repeats, device, module=hf_peer):
        self.args, self.config, self.seq_len = args, config, seq_len
        self.warmup, self.repeats, self.device = warmup, repeats, device
        self.module = module
        self.peer = None

    def measure(self, micro_batch: int) -> Row:
        if self.peer is None:
            self.peer = self.module.build_side(self.args, self.config, self.seq_len, self.device)
        row = self.module.measure(
            self.peer,
            self.args,
            micro_batch=micro_batch,
            seq_len=self.seq_len,
            warmup=self.warmup,
            repeats=self.repeats,
            device=self.device,
        )
        row["config"] |= {"n_future_tokens": 1, "warmup": self.warmup, "repeats": self.repeats}
        return row

    def close(self) -> None:
        self.peer = None


def ordered(sides: Sequence[str]) -> list[str]:
    """``sides`` in the order given, the Liger peers last (their patch cannot be undone), then
    torchtitan's (importing it changes process-wide torch settings)."""
    return sorted(sides, key=lambda side: (side.startswith("titan"), "liger" in settings(side)))


def run_shape(
    shape: str,
    out: Path,
    *,
    sides: Sequence[str] | None = None,
    micro_batches: Sequence[int] | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Measure ``sides`` of ``shape`` (all by default) over ``micro_batches``; the results, also
    in ``<out>/<shape>.json`` (earlier rows of other sides kept)."""
    spec = SHAPES[shape]
    sides = ordered(sides or list(SIDES[shape]))
    unknown = [s for s in sides if s not in SIDES[shape]]
    if unknown:
        raise WmtpError(f"unknown side(s) {unknown} of {shape}: {', '.join(SIDES[shape])}")
    sizes = list(micro_batches or spec.micro_batches)
    one_head = shape_recipe(shape, heads=1, micro_batch=sizes[0], overrides=overrides)
    side_of = _Sides(
        shape,
        one_head,
        overrides=overrides,
        warmup=spec.warmup if warmup is None else warmup,
        repeats=spec.repeats if repeats is None else repeats,
        device=device,
    )
    path = out / f"{shape}.json"
    results = _header(shape, path, side_of.args, one_head, side_of.device, command, sides)
    out.mkdir(parents=True, exist_ok=True)

    def record(row: Row, leftover: float) -> None:
        row["config"]["allocated_before_side_gib"] = leftover  # what earlier sides left, if any
        results["rows"].append(row)
        partial = path.with_suffix(".json.partial")  # a stopped process leaves a whole file
        partial.write_text(json.dumps(results, indent=2) + "\n")
        partial.replace(path)
        log(_line(row))

    for side in sides:
        on_row = functools.partial(record, leftover=_allocated_gib(side_of.device))
        measured = side_of(side)
        if isinstance(measured, str):
            on_row(error_row(side, None, f"not measured: {measured}"))
            continue
        sweep(side, measured.measure, sizes, on_row=on_row)
        measured.close()
        del measured
        torch._dynamo.reset()  # compiled graphs (of any side that compiles) hold its weights
        free_memory()
    return results


class _Sides:
    """Each side's measuring function at one shape (or why it cannot run here)."""

    def __init__(self, shape: str, one_head, *, overrides, warmup, repeats, device):
        self.shape, self.one_head, self.overrides = shape, one_head, overrides
        self.timing = {"warmup": warmup, "repeats": repeats}
        self.device_name = device  # None: the recipe's parallel.device
        self.device = _device(device or one_head.parallel.device)
        self.args, self.seq_len = peer_args(one_head), one_head.data.max_length
        if self.device.type == "cuda":
            from wmtp.bench.timing import static_compile_shapes

            static_compile_shapes()

    def _compiles(self) -> bool:
        """Whether the shape's recipe as written compiles its blocks on this device."""
        return self.one_head.parallel.compiles(self.device.type)

    def __call__(self, side: str) -> Side | str:
        as_written = side.removesuffix("+compile")
        if side.startswith("wmtp-") and side != as_written and self._compiles():
            return f"the recipe as written compiles its blocks here: the side {as_written}"
        if "compile" in settings(side) and self.device.type != "cuda":
            return "torch.compile sides are measured on CUDA only (the CPU runs are tests)"
        if side.startswith("wmtp-"):
            if "float8" in settings(side) and (why := float8.why_not(self.device)):
                return f"parallel.float8 {why}"
            heads = 1 if side.startswith("wmtp-1head") else 4
            sets = [s for setting, s in WMTP_SETTINGS.items() if setting in settings(side)]
            overrides = [*sets, *self.overrides]

            def recipe_at(b: int):
                return shape_recipe(self.shape, heads=heads, micro_batch=b, overrides=overrides)

            return _WmtpSide(side, recipe_at, device=self.device_name, **self.timing)
        if side.startswith("titan"):
            return self._titan(side)
        config = peer_config(self.shape, side, self.one_head)
        reason = hf_peer.unavailable(config, self.device)
        if reason:
            return reason
        return _PeerSide(self.args, config, self.seq_len, device=self.device, **self.timing)

    def _titan(self, side: str) -> Side | str:
        """torchtitan's peer (:mod:`wmtp.bench.titan_peer`): compiled unless ``no-compile``, its
        float8 training with ``float8``."""
        from wmtp.bench import titan_peer

        wanted = settings(side)
        config = titan_peer.TitanConfig(
            side, compile="no-compile" not in wanted, float8="float8" in wanted
        )
        reason = titan_peer.unavailable(config, self.args, self.device)
        if reason:
            return reason
        return _PeerSide(
            self.args, config, self.seq_len, device=self.device, module=titan_peer, **self.timing
        )


def _allocated_gib(device: torch.device) -> float:
    free_memory()
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def best_micro_batch(out: Path, shape: str, side: str) -> int:
    """The micro-batch of ``side``'s best measured row in ``<out>/<shape>.json``."""
    path = out / f"{shape}.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    found = best([r for r in rows if r["side"] == side])
    if found is None:
        raise WmtpError(f"{path}: no measured row of {side} to take the best micro-batch from")
    return found["micro_batch"]


def _device(name: str) -> torch.device:
    from wmtp.parallel.dist import resolve_device

    return resolve_device(name)


def _header(shape, path: Path, args, recipe, device, command, sides) -> dict:
    """The results file's description, and the rows of sides not measured now, kept."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    lora = recipe.model.policy.lora if shape == "lora7b" else None
    return {
        "shape": shape,
        "description": SHAPES[shape].description,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": 1,
        "versions": {
            "python": platform.python_version(),
            **{name: installed_version(name) for name in PACKAGES},
        },
        "seq_len": recipe.data.max_length,
        "model": args.to_dict(),
        "lora": lora.model_dump() if lora is not None else None,
        "mfu_formula": MFU_FORMULA,
        "memory_measure": MEMORY_MEASURE,
        "sides": SIDES[shape],
        "commands": [*old.get("commands", []), command] if command else old.get("commands", []),
        "rows": [r for r in old.get("rows", []) if r["side"] not in sides],
    }


PACKAGES = ("torch", "transformers", "peft", "liger-kernel", "torchtitan")
"""The packages whose versions a results file records."""


def _line(row: Row) -> str:
    where = f"{row['side']:<16} b{row['micro_batch'] if row['micro_batch'] is not None else '-'}"
    if row["error"] is not None:
        return f"{where:<22} {row['error']}"
    return (
        f"{where:<22} {row['tokens_per_s']:10.0f} tok/s  MFU {shown(row['mfu'], '6.1%')}  "
        f"peak {shown(row['peak_memory_gib'], '6.2f')} GiB  step {row['step']['median_ms']:9.1f} ms"
    )
