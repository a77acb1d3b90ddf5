"""``wmtp bench ...``: GPU benchmarks whose figures the project reports (never timed tests)."""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from wmtp.commands._common import Group, SetOption, choices, command, console, relaunch
from wmtp.errors import WmtpError

bench_app = typer.Typer(
    cls=Group,
    help="Benchmarks: attention backends, training steps, Hugging Face peers, decoding.",
    no_args_is_help=True,
)


def out_folder(files: str) -> Any:
    """The ``--out`` option of a subcommand that writes ``files`` into a folder."""
    return Annotated[Path, typer.Option("--out", metavar="DIR", help=f"Folder for {files}.")]


def check_out_folder(out: Path) -> None:
    """Refuse (exit 2, at ``--out``) a results folder no file can be written in, before any
    measurement: a file where a folder must be, a read-only or kernel file system."""
    from wmtp.folders import check_output_folder

    check_output_folder(out, "--out")


def write_result(out: Path, path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (under ``--out`` ``out``); a write refused this late (the
    folder taken away or filled during the benchmark) prints the figures so they are not lost,
    then is an error located at ``--out``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        print(text)
        raise WmtpError(
            f"--out {out}: cannot write {path} ({exc.strerror or exc}); the figures are printed "
            "above"
        ) from None


def _need_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise WmtpError("this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)")


@command(bench_app, "attention")
def attention(
    out: out_folder("attention.json and attention.md") = Path("bench/results/attention"),
    dtype: Annotated[str, typer.Option(metavar="DTYPE", help="bfloat16 or float16.")] = "bfloat16",
    sweep: Annotated[bool, typer.Option(help="Also sweep FlexAttention kernel options.")] = True,
    rounds: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Rounds of timings, every backend in turn in each."),
    ] = 3,
    record: Annotated[
        Path | None,
        typer.Option(
            metavar="TABLE",
            help="Rank the backends measured here per layout and record them for this GPU in "
            "this table (auto reads $WMTP_ATTENTION_TABLE, then wmtp/models/attention_table.json).",
        ),
    ] = None,
    from_json: Annotated[
        Path | None,
        typer.Option(
            "--from-json",
            metavar="FILE",
            help="Measure nothing: take the rows of an earlier attention.json (with --record).",
        ),
    ] = None,
) -> None:
    """Every attention backend over training shapes: ms, TFLOP/s, memory, error against eager."""
    if from_json is not None:
        if record is None:
            raise WmtpError("--from-json only records a ranking: give --record TABLE too")
        result = _read_result(from_json)
        source = f"wmtp bench attention --rounds {result.get('rounds', '?')} ({from_json})"
    else:
        check_out_folder(out)
        _need_cuda()
        import torch

        from wmtp.bench.attention import run_attention_bench

        result = run_attention_bench(out, dtype=getattr(torch, dtype), sweep=sweep, rounds=rounds)
        console.print(f"{len(result['rows'])} measurements -> {out}/attention.md, attention.json")
        source = f"wmtp bench attention --rounds {rounds}"
    if record is not None:
        from wmtp.models.attention_table import record as record_ranking

        try:
            entry = record_ranking(record, result, source)
        except (ValueError, KeyError) as exc:
            raise WmtpError(f"cannot record a ranking in {record}: {exc}") from exc
        for layout, ranked in entry["layouts"].items():
            order = ", ".join(f"{r['backend']} {r['geomean_vs_fastest']:.2f}x" for r in ranked)
            console.print(f"{entry['device']}/{entry['dtype']} {layout}: {order}")
        console.print(f"recorded in {record}")


def _read_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WmtpError(f"{path}: cannot read benchmark results ({exc})") from exc
    missing = [key for key in ("device", "dtype", "rows") if key not in result]
    if missing:
        raise WmtpError(f"{path}: not a `wmtp bench attention` result (no {', '.join(missing)})")
    return result


@command(bench_app, "peer")
def peer(
    out: out_folder("peer.json") = Path("bench/results/peer"),
    flavour: Annotated[
        str, typer.Option(metavar="NAME", help="Model shape (a flavour name).")
    ] = "llama-1b-bench",
    batch: Annotated[int, typer.Option(metavar="N", help="Micro-batch size.")] = 2,
    seq_len: Annotated[int, typer.Option(metavar="N", help="Sequence length.")] = 2048,
    compile: Annotated[bool, typer.Option(help="Also run with torch.compile.")] = True,
) -> None:
    """A Hugging Face transformers Llama of the same shape: tokens/s and MFU (sdpa, eager)."""
    check_out_folder(out)
    _need_cuda()
    from wmtp.bench.hf_peer import bench_hf
    from wmtp.models.args import flavour as lookup

    args = lookup(flavour)
    configs = [("sdpa", False), ("eager", False)] + ([("sdpa", True)] if compile else [])
    results = [
        result
        for attn, c in configs
        for result in bench_hf(
            args, batches=[batch], seq_len=seq_len, compile=c, attn_implementation=attn
        )
    ]
    from wmtp.bench.timing import shown

    write_result(out, out / "peer.json", json.dumps([r.to_dict() for r in results], indent=2))
    for r in results:
        console.print(f"{r.name:<20} {r.tokens_per_s:10.0f} tokens/s  MFU {shown(r.mfu, '.1%')}")


class PeerShape(str, enum.Enum):
    """The shapes of ``wmtp bench peers`` (``wmtp.bench.peers.SHAPES``)."""

    full1b = "full1b"
    lora7b = "lora7b"


@command(bench_app, "peers")
def peers(
    shape: Annotated[
        PeerShape,
        typer.Option(
            metavar=choices(PeerShape),
            help="full1b: the 1B full fine-tune (llama-1b-bench); lora7b: the production LoRA "
            "recipe (recipes/baseline.toml, Llama-2-7B MTP).",
        ),
    ],
    micro_batches: Annotated[
        str | None,
        typer.Option(
            "--micro-batches",
            metavar="N,...",
            help="Comma-separated micro-batches to sweep (default full1b 2,4,8,16; lora7b "
            "1,2,4,8), or best:SIDE: the best micro-batch of SIDE in --out's results.",
        ),
    ] = None,
    sides: Annotated[
        str | None,
        typer.Option(
            metavar="SIDE,...",
            help="Comma-separated sides (default all): full1b wmtp-1head, wmtp-4heads, "
            "wmtp-1head+float8, hf, hf+compile, hf+liger, titan, titan+float8, "
            "titan+no-compile, titan+float8+no-compile (torchtitan's Llama3); lora7b wmtp-4heads, wmtp-1head, "
            "wmtp-4heads+compile, wmtp-1head+compile, wmtp-4heads+no-checkpointing, "
            "wmtp-1head+no-checkpointing, hf-peft, hf-peft+compile, hf-peft+liger, "
            "hf-peft+no-checkpointing, hf-peft+compile+no-checkpointing, "
            "hf-peft+liger+no-checkpointing; in float8 wmtp-4heads+float8, "
            "wmtp-4heads+no-checkpointing+float8, hf-peft+compile+no-checkpointing+float8. "
            "Liger peers run last, torchtitan's after them.",
        ),
    ] = None,
    set_: SetOption = None,
    warmup: Annotated[
        int | None,
        typer.Option(min=0, metavar="N", help="Steps before timing (full1b 3, lora7b 2)."),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Steps timed, median reported (full1b 10, lora7b 5; on a GPU more where they "
            "take under 5 s).",
        ),
    ] = None,
    out: out_folder("SHAPE.json, rewritten after every row") = Path("bench/results/peers"),
) -> None:
    """wmtp against the Hugging Face peers at one shape, every side swept over micro-batches.

    Each side (wmtp's trainer with one and four heads; transformers plain, compiled, with Liger
    kernels; PEFT LoRA at the LoRA shape, with gradient checkpointing and without) runs each
    micro-batch until one runs out of memory; a side that cannot run here is a row saying why.
    One MFU formula and one memory measure for all. Rows go to OUT/SHAPE.json as they are measured (`bench/summarise_h200.py` reads
    them); --set changes the shape's wmtp recipe, which every side takes its shape from."""
    from wmtp.bench.peers import SIDES, best_micro_batch, run_shape
    from wmtp.parallel import teardown

    check_out_folder(out)
    names = [s.strip() for s in sides.split(",")] if sides else list(SIDES[shape.value])
    sizes = None
    if micro_batches and micro_batches.startswith("best:"):
        sizes = [best_micro_batch(out, shape.value, micro_batches.removeprefix("best:"))]
    elif micro_batches:
        try:
            sizes = [int(b) for b in micro_batches.split(",")]
        except ValueError:
            raise WmtpError(
                f"--micro-batches {micro_batches!r}: give integers or best:SIDE"
            ) from None
    argv = ["wmtp", "bench", "peers", "--shape", shape.value, "--sides", ",".join(names)]
    argv += ["--micro-batches", ",".join(map(str, sizes))] if sizes else []
    for flag, value in (("--warmup", warmup), ("--repeats", repeats)):
        argv += [flag, str(value)] if value is not None else []
    argv += [f"--set {s}" for s in set_ or ()]
    try:
        run_shape(
            shape.value,
            out,
            sides=names,
            micro_batches=sizes,
            warmup=warmup,
            repeats=repeats,
            overrides=tuple(set_ or ()),
            command=" ".join(argv),
            log=lambda line: console.print(line, highlight=False),
        )
    finally:
        teardown()
    console.print(f"-> {out}/{shape.value}.json", highlight=False)


@command(bench_app, "step")
def step(
    recipe: Annotated[
        Path,
        typer.Argument(help="Recipe whose training step is measured, as `wmtp run` builds it."),
    ],
    set_: SetOption = None,
    out: out_folder(
        "STEM.json (STEM-Ngpu.json, or STEM-Ncpu.json without CUDA, for N processes; with "
        "--profile also STEM.txt and STEM.trace.json.gz)"
    ) = Path("bench/results/step"),
    warmup: Annotated[int, typer.Option(min=0, metavar="N", help="Steps run before timing.")] = 5,
    repeats: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Steps timed, median reported (on a GPU more where they take under 5 s).",
        ),
    ] = 20,
    nproc_per_node: Annotated[
        int,
        typer.Option(
            "--nproc-per-node",
            min=1,
            metavar="N",
            help="Processes on this machine, one per GPU (without CUDA, CPU processes under "
            "gloo); > 1 launches torchrun and measures the FSDP2 step.",
        ),
    ] = 1,
    profile: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="After timing, profile N steps with torch.profiler: "
            "DIR/STEM.trace.json.gz (open in Perfetto) and DIR/STEM.txt (operators by time).",
        ),
    ] = 0,
) -> None:
    """A recipe's training step: tokens/s, MFU (median of the timed steps), peak memory.

    Peak memory is the absolute peak allocated since the model and optimizer were built, the
    figure `wmtp run` logs as peak_memory_gb.

    The trainer of `wmtp run` (models, parallelism, MTP loss, frozen models, weighting,
    optimizer, accumulation) on synthetic batches of the recipe's shapes: no dataset needed.
    Pretrained weights and trained checkpoints the recipe names are loaded as `wmtp run` would;
    `--set "model.policy.path=''"` measures the same shapes with random weights."""
    from wmtp.recipe import load_recipe

    recipe_obj = load_recipe(recipe, overrides=tuple(set_ or ())).recipe
    if recipe_obj.pipeline.trains is None:
        raise WmtpError(f"{recipe}: pipeline {recipe_obj.experiment.pipeline!r} trains nothing")
    check_out_folder(out)
    if nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        relaunch(("bench", "step"), nproc_per_node)
    from wmtp.bench.step import bench_step
    from wmtp.parallel import teardown

    world = int(os.environ.get("WORLD_SIZE", "1"))
    processes = _processes(world, recipe_obj.parallel.device)
    stem = recipe.stem if world == 1 else f"{recipe.stem}-{world}{processes.suffix}"
    try:
        result = bench_step(
            recipe_obj,
            label=recipe.stem,
            warmup=warmup,
            repeats=repeats,
            profile=out / stem if profile else None,
            profile_steps=profile,
        )
    finally:
        teardown()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    write_result(out, out / f"{stem}.json", json.dumps(result.to_dict(), indent=2))
    console.print(
        f"{result.label}{processes.shown}: {result.tokens_per_s:.0f} tokens/s{_mfu(result)}"
        f"{_memory(result)}, step {result.step.median_ms:.1f} ms (median of "
        f"{result.step.repeats}) -> {out}/{stem}.json",
        highlight=False,
    )
    if profile:
        console.print(f"profile of {profile} steps -> {out}/{stem}.txt, {stem}.trace.json.gz")


class Processes(NamedTuple):
    shown: str
    """After the recipe's name on the console: `` on 2 GPUs``; nothing for one."""
    suffix: str
    """After ``-N`` in the result's file name: ``gpu`` or ``cpu``."""


def _processes(world: int, device: str) -> Processes:
    """What ``world`` processes of ``bench step`` run on: GPUs, or (``parallel.device`` 'cpu',
    or 'auto' without CUDA) CPU processes."""
    import torch

    on_gpus = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    shown, suffix = ("GPUs", "gpu") if on_gpus else ("CPU processes", "cpu")
    return Processes(f" on {world} {shown}" if world > 1 else "", suffix)


def _mfu(result) -> str:
    if result.mfu is None:
        return ""
    return f", MFU {result.mfu:.1%} (of {result.peak_tflops:.0f} TFLOP/s bf16)"


def _memory(result) -> str:
    return "" if result.peak_memory_gib is None else f", peak {result.peak_memory_gib:.2f} GiB"


@command(bench_app, "suite")
def suite(
    out: out_folder("DEVICE_suite.json and DEVICE_suite.md") = Path("bench/results"),
    flavour: Annotated[
        str, typer.Option(metavar="NAME", help="Model shape (a flavour name).")
    ] = "llama-1b-bench",
    seq_len: Annotated[int, typer.Option(metavar="N", help="Sequence length.")] = 2048,
) -> None:
    """The project's GPU figures side by side: HF peer, ntp, mtp4 (32k/128k vocab), verifiable."""
    check_out_folder(out)
    _need_cuda()
    from wmtp.bench.suite import run_suite
    from wmtp.bench.timing import shown

    result = run_suite(out, base=flavour, seq_len=seq_len)
    console.print(
        f"ratio vs HF sdpa+compile: {result['step_tokens_per_s_ratio_vs_hf_compile']:.2f}x, "
        f"MFU {shown(result['mfu_ntp'], '.1%')}"
    )


@command(bench_app, "decode")
def decode(
    flavour: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Model shape with random weights (a flavour name)."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            metavar="PATH", help="A trained run directory, checkpoint or `wmtp export` instead."
        ),
    ] = None,
    n_future_tokens: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Heads (flavour only).")
    ] = None,
    agreeing_heads: Annotated[
        bool, typer.Option(help="Also rig the heads to agree: the speed-up's upper bound.")
    ] = False,
    prompts: Annotated[int, typer.Option(min=1, metavar="N", help="Prompts to average over.")] = 5,
    new_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Tokens decoded per prompt (a prompt longer than the context leaves room for "
            "keeps its last tokens: prompts_cut_to_context).",
        ),
    ] = 256,
    eager: Annotated[
        bool, typer.Option(help="No CUDA graphs: every decoding step launches its kernels.")
    ] = False,
    no_compile: Annotated[
        bool, typer.Option("--no-compile", help="CUDA graphs of the eager kernels, not compiled.")
    ] = False,
    also_eager: Annotated[
        bool, typer.Option(help="On a GPU, also time eager steps beside the CUDA graphs.")
    ] = False,
    no_fuse: Annotated[
        bool,
        typer.Option(
            "--no-fuse", help="q/k/v and w1/w3 as separate matmuls (on a GPU they run fused)."
        ),
    ] = False,
    also_unfused: Annotated[
        bool, typer.Option(help="Also time the same steps without fused projections.")
    ] = False,
    temperature: Annotated[
        float,
        typer.Option(
            min=0.0, metavar="T", help="0: greedy; above: sampled, and speculative sampling."
        ),
    ] = 0.0,
    top_p: Annotated[
        float, typer.Option(min=0.0, max=1.0, metavar="P", help="Nucleus when sampled.")
    ] = 1.0,
    peers: Annotated[
        bool,
        typer.Option(
            help="Also Hugging Face generate of the same shape (dynamic cache; on CUDA a static "
            "cache compiled by generate, new or kept across calls) against wmtp's generate, at "
            "batch 1 and at --batch sampled rows; each side the median of three timed calls."
        ),
    ] = False,
    batch: Annotated[
        int, typer.Option(min=1, metavar="N", help="Rows of the batched comparison.")
    ] = 20,
    profile: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Also torch.profiler traces of decoding (plain at batch 1 and --batch sampled "
            "rows whose cache spans the context; with extra heads, self-speculative at batch 1, "
            "greedy and sampled): PATH.<case>.trace.json.gz and PATH.<case>.txt.",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="FILE",
            help="JSON file for the figures; an existing file is replaced only where it is an "
            "earlier `wmtp bench decode` result (or with --force).",
        ),
    ] = Path("bench/results/decode.json"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace an --out file of any other content.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Batch-1 decoding: plain vs self-speculative (MTP heads draft, head 1 verifies), greedy or
    sampled; time to first token, acceptance per head. On a GPU the steps are compiled and
    replayed from CUDA graphs, prepared while warming up (their seconds reported apart)."""
    from wmtp.eval import speed

    if (flavour is None) == (checkpoint is None):
        raise WmtpError("give exactly one of --flavour and --checkpoint")
    _check_decode_options(flavour, n_future_tokens, set_)
    check_out_file(out, force=force)
    argv = ["--out", str(out), "--prompts", str(prompts), "--new-tokens", str(new_tokens)]
    argv += ["--flavour", flavour] if flavour else ["--checkpoint", str(checkpoint)]
    if n_future_tokens is not None:
        argv += ["--n-future-tokens", str(n_future_tokens)]
    if agreeing_heads:
        argv.append("--agreeing-heads")
    argv += ["--eager"] * eager + ["--no-compile"] * no_compile + ["--also-eager"] * also_eager
    argv += ["--no-fuse"] * no_fuse + ["--also-unfused"] * also_unfused
    argv += ["--temperature", str(temperature), "--top-p", str(top_p), "--batch", str(batch)]
    argv += ["--peers"] * peers
    argv += ["--profile", str(profile)] if profile is not None else []
    argv += [a for s in set_ or () for a in ("--set", s)]
    text = json.dumps(speed.run(speed.parse_args(argv)), indent=2)
    write_result(out.parent, out, text + "\n")
    print(text)
    typer.echo(f"-> {out}", err=True)  # stdout stays one JSON document


def _check_decode_options(
    flavour: str | None, n_future_tokens: int | None, overrides: list[str] | None
) -> None:
    """What ``bench decode`` would otherwise find out late or not at all: a flavour by another
    name, more heads than its layers, heads asked of a checkpoint (it has its own), ``--set``
    given a flavour (it has no recipe to set)."""
    from wmtp.models.args import flavour as flavour_args

    if flavour is not None and overrides:
        raise WmtpError(
            "--set changes a checkpoint's recipe; a --flavour has none (random weights of a "
            "named shape): leave out --set, or decode a --checkpoint"
        )
    if flavour is not None:
        layers = flavour_args(flavour).n_layers  # a did-you-mean error for an unknown name
        if n_future_tokens is not None and n_future_tokens > layers:
            raise WmtpError(
                f"--n-future-tokens {n_future_tokens}: flavour {flavour!r} has {layers} layers, "
                "and every head is one of them"
            )
    elif n_future_tokens is not None:
        raise WmtpError(
            "--n-future-tokens sets a flavour's heads; a --checkpoint decodes with the heads it "
            "trained"
        )


DECODE_RESULT_KEYS = frozenset({"as_loaded", "new_tokens", "n_future_tokens"})
"""Keys every ``wmtp bench decode`` result holds (``wmtp.eval.speed.run``)."""


def check_out_file(out: Path, *, force: bool) -> None:
    """Refuse, before any measurement, an ``--out`` JSON file that cannot be written (a folder,
    a folder no file can be made in) or that holds something other than an earlier result of
    this command (unless ``force``): the user's file is never replaced unasked."""
    if out.is_dir():
        raise WmtpError(f"--out {out}: a folder; give the JSON file to write")
    check_out_folder(out.parent)
    if out.exists() and not force and not _is_decode_result(out):
        raise WmtpError(
            f"--out {out}: exists and is not an earlier `wmtp bench decode` result; give "
            "another file, or --force to replace it"
        )


def _is_decode_result(path: Path) -> bool:
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(found, dict) and found.keys() >= DECODE_RESULT_KEYS


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
