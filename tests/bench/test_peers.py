"""``wmtp bench peers`` on CPU, tiny shapes, real transformers and PEFT: the peers train what they
should and count what they read, a sweep records failures and goes on, one MFU formula and one
memory measure for every side, and the summariser finds every figure in a results folder.
Figures come from GPUs; the Liger and compile peers only run there (their guards are tested)."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from typer.testing import CliRunner

from tests.train.train_helpers import REPO
from wmtp.bench import hf_peer, peers
from wmtp.bench import step as step_bench
from wmtp.bench.sweep import measured_row, sweep
from wmtp.cli import app

pytestmark = pytest.mark.minutes(1.5)

CPU = ("parallel.device='cpu'", "data.max_length=32", "model.policy.flavour='tiny'")
TINY = {
    "lora7b": CPU,
    "full1b": (*CPU, "parallel.compile=false", "model.policy.vocab_size=512"),
}
"""The shapes' recipes at tiny sizes on the CPU (the production LoRA recipe keeps its LoRA,
activation checkpointing and bf16)."""
SEQ = 32


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # transformers' deprecation notices about its own names
        warnings.simplefilter("ignore", FutureWarning)
        yield


def recipe(shape: str, heads: int = 1, micro_batch: int = 2):
    return peers.shape_recipe(shape, heads=heads, micro_batch=micro_batch, overrides=TINY[shape])


def built(shape: str, side: str):
    r = recipe(shape)
    args = peers.peer_args(r)
    return args, hf_peer.build_peer(args, peers.peer_config(shape, side, r), torch.device("cpu"))


def measure(peer, args, micro_batch=2):
    cpu = torch.device("cpu")
    return hf_peer.measure(
        peer, args, micro_batch=micro_batch, seq_len=SEQ, warmup=1, repeats=2, device=cpu
    )


def test_the_full_fine_tuning_peer_trains_every_weight_and_counts_its_tokens():
    args, peer = built("full1b", "hf")
    assert args.n_future_tokens == 1 and args.vocab_size == 512  # the recipe's shape, one head
    before = {n: p.detach().clone() for n, p in peer.model.named_parameters()}
    row = measure(peer, args, micro_batch=3)
    assert row["error"] is None and row["tokens_per_step"] == 3 * SEQ
    assert row["tokens_per_s"] == pytest.approx(3 * SEQ / (row["step"]["median_ms"] / 1e3))
    assert row["step"]["repeats"] == 2 and row["config"]["lora"] is False
    for name, p in peer.model.named_parameters():
        assert p.dtype == torch.float32 and not torch.equal(p, before[name]), name


def test_the_lora_peer_trains_only_the_recipes_adapters():
    args, peer = built("lora7b", "hf-peft")
    named = dict(peer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    # the recipe's seven targets per layer, A and B each
    assert len(trainable) == args.n_layers * 7 * 2
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {named[n].dtype for n in trainable} == {torch.float32}
    assert {p.dtype for n, p in named.items() if n not in trainable} == {torch.bfloat16}
    lora = peer.model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (64, 128.0, 0.05)
    assert peer.config.gradient_checkpointing  # the recipe checkpoints activations
    before = {n: p.detach().clone() for n, p in named.items()}
    row = measure(peer, args)
    assert row["config"]["trainable_parameters"] == sum(named[n].numel() for n in trainable)
    for name, p in named.items():
        assert torch.equal(p, before[name]) == (name not in trainable), name


def _oom_above(limit: int):
    """``build_peer``, whose model runs out of memory on batches above ``limit`` rows (raised
    where the allocation would fail: the model's forward)."""
    real = hf_peer.build_peer

    def build(args, config, device):
        peer = real(args, config, device)

        def check(module, inputs, kwargs):
            if kwargs["input_ids"].shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        peer.model.register_forward_pre_hook(check, with_kwargs=True)
        return peer

    return build


def test_a_sweep_records_the_size_that_ran_out_of_memory_and_the_sweep_goes_on(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(hf_peer, "build_peer", _oom_above(2))
    results = peers.run_shape(
        "full1b",
        tmp_path,
        sides=["hf", "wmtp-1head"],
        micro_batches=[4, 1, 2, 8],
        warmup=0,
        repeats=1,
        overrides=TINY["full1b"],
        log=lambda line: None,
    )
    hf = [(r["micro_batch"], r["error"]) for r in results["rows"] if r["side"] == "hf"]
    assert [b for b, _ in hf] == [1, 2, 4]  # smallest first; stopped at the first failure
    assert hf[0][1] is None and hf[1][1] is None
    assert hf[2][1].startswith("out of memory (CUDA out of memory")
    wmtp = [r for r in results["rows"] if r["side"] == "wmtp-1head"]
    assert [r["micro_batch"] for r in wmtp] == [1, 2, 4, 8]  # the next side ran
    assert json.loads((tmp_path / "full1b.json").read_text()) == results


def test_any_other_failure_is_a_row_with_its_reason():
    def measure_at(micro_batch: int) -> dict:
        if micro_batch == 2:
            raise ValueError("the kernel refused this shape")
        return measured_row("x", micro_batch, **_fake_figures())

    rows = sweep("x", measure_at, [1, 2, 4])
    assert [r["micro_batch"] for r in rows] == [1, 2]
    assert rows[1]["error"] == "ValueError: the kernel refused this shape"
    assert rows[1]["tokens_per_s"] is None and set(rows[1]) == set(rows[0])


def _fake_figures() -> dict:
    from wmtp.bench.timing import Timing

    return {
        "tokens_per_step": 10,
        "step": Timing(1.0, 1.0, 1.0, 1),
        "flops_per_token": 1.0,
        "peak_tflops": 0.0,
        "peak_memory_gib": 0.0,
    }


def test_liger_and_compile_are_guarded_with_their_reasons(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # not installed
    assert hf_peer.liger_unavailable(cuda).startswith("liger-kernel cannot be imported")
    liger = hf_peer.PeerConfig("hf+liger", liger=True)
    assert "CUDA only" in hf_peer.unavailable(liger, cpu)
    compiled = hf_peer.PeerConfig("hf+compile", compile=True)
    assert "CUDA only" in hf_peer.unavailable(compiled, cpu)
    assert hf_peer.unavailable(hf_peer.PeerConfig("hf"), cpu) is None
    monkeypatch.setattr(hf_peer, "_LIGER_APPLIED", [True])  # Liger patched this process
    assert "already patched" in hf_peer.unavailable(hf_peer.PeerConfig("hf"), cpu)
    assert peers.ordered(["hf+liger", "wmtp-1head", "hf", "hf+compile"]) == [
        "wmtp-1head",
        "hf",
        "hf+compile",
        "hf+liger",
    ]


def test_a_peer_that_cannot_run_is_one_row_saying_why(tmp_path):
    results = peers.run_shape(
        "lora7b",
        tmp_path,
        sides=["hf-peft+liger", "hf-peft+compile"],
        micro_batches=[1],
        overrides=TINY["lora7b"],
        log=lambda line: None,
    )
    rows = {r["side"]: r for r in results["rows"]}
    assert rows["hf-peft+liger"]["micro_batch"] is None
    assert rows["hf-peft+liger"]["error"].startswith("not measured: Liger kernels")
    assert rows["hf-peft+compile"]["error"].startswith("not measured: torch.compile")


GIB = {"wmtp": 3.0, "peer": 2.0}


def _device_figures(monkeypatch):
    """A known peak (1 GFLOP/s) and peak memory, as a GPU would report them: every other
    figure comes from the real CPU runs."""
    monkeypatch.setattr(step_bench, "device_peak_tflops", lambda device: 1e-3)
    monkeypatch.setattr(hf_peer, "device_peak_tflops", lambda device: 1e-3)
    monkeypatch.setattr(step_bench, "peak_allocated_gib", lambda device: GIB["wmtp"])
    monkeypatch.setattr(hf_peer, "peak_allocated_gib", lambda device: GIB["peer"])


@pytest.mark.parametrize(("shape", "peer"), [("lora7b", "hf-peft"), ("full1b", "hf")])
def test_one_mfu_formula_for_wmtp_and_the_peer(tmp_path, monkeypatch, shape, peer):
    from wmtp.models.args import training_flops_per_token

    _device_figures(monkeypatch)
    results = peers.run_shape(
        shape,
        tmp_path,
        sides=["wmtp-1head", peer],
        micro_batches=[2],
        warmup=0,
        repeats=1,
        overrides=TINY[shape],
        log=lambda line: None,
    )
    wmtp, hf = results["rows"]
    lora = shape == "lora7b"
    args = peers.peer_args(recipe(shape))
    # the trainer's own count (Trainer.flops_per_token) is the peer's: the same function
    expected = training_flops_per_token(args, SEQ, weight_grads=not lora)
    assert wmtp["flops_per_token"] == hf["flops_per_token"] == expected
    for row in (wmtp, hf):
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * expected / 1e9)
    assert wmtp["peak_memory_gib"] == GIB["wmtp"] and hf["peak_memory_gib"] == GIB["peer"]
    # `wmtp bench step`'s own figure: the same formula against the same peak
    own = step_bench.bench_step(recipe(shape), label="x", warmup=0, repeats=1, device="cpu")
    assert own.mfu == pytest.approx(own.tokens_per_s * expected / 1e9)


def _cli(tmp_path, shape: str, *args: str):
    sets = [a for s in TINY[shape] for a in ("--set", s)]
    argv = ["bench", "peers", "--shape", shape, "--out", str(tmp_path), "--warmup", "0"]
    result = CliRunner().invoke(app, [*argv, "--repeats", "1", *sets, *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_the_summariser_finds_every_figure_in_a_results_folder(tmp_path, monkeypatch):
    _device_figures(monkeypatch)
    _cli(tmp_path, "full1b", "--micro-batches", "1,2", "--sides", "wmtp-1head,hf,hf+liger")
    _cli(tmp_path, "full1b", "--micro-batches", "best:wmtp-1head", "--sides", "wmtp-4heads")
    _cli(tmp_path, "lora7b", "--micro-batches", "1,2")
    written = json.loads((tmp_path / "full1b.json").read_text())
    assert len(written["commands"]) == 2  # the second call added its side to the same file
    assert "--sides wmtp-4heads --micro-batches" in written["commands"][1]
    script = str(REPO / "bench" / "summarise_h200.py")
    subprocess.run([sys.executable, script, "--results", str(tmp_path)], check=True)
    summary = json.loads((tmp_path / "h200.json").read_text())
    for key in (
        "ratio_vs_best_peer",
        "lora7b_ratio_vs_best_peer",
        "lora7b_as_written_ratio_vs_best_peer",
        "lora7b_ntp_ratio_vs_best_peer",
        "mfu_ntp",
        "mtp4_step_time_over_flop_floor",
    ):
        assert summary[key] > 0, key
    assert summary["best_peer"].startswith("hf at micro-batch")
    assert summary["lora7b_best_peer"].startswith(("hf-peft at", "hf-peft+no-checkpointing at"))
    assert summary["lora7b_peak_memory_ratio_vs_peer"] == GIB["wmtp"] / GIB["peer"]
    assert summary["mtp4_peak_memory_ratio_vs_ntp"] == 1.0
    assert summary["float8_ratio_vs_bf16"] is None and summary["run_vs_bench_step"] is None
    assert summary["unmeasured_sides"]["full1b"]["hf+compile"].startswith("not measured")
    best = summary["lora7b_best"]["wmtp-4heads"]["side"]  # the faster of its CPU settings
    assert best in ("wmtp-4heads", "wmtp-4heads+no-checkpointing")  # +compile: CUDA only
    assert "CUDA only" in summary["unmeasured_sides"]["lora7b"]["wmtp-4heads+compile"]
    assert {(r["side"], r["micro_batch"]) for r in summary["rows"]["lora7b"]} >= {
        ("wmtp-4heads", 1),
        ("wmtp-4heads", 2),
        ("hf-peft", 2),
        ("hf-peft+no-checkpointing", 2),
    }
    md = (tmp_path / "h200.md").read_text()
    for text in ("MFU = tokens/s", "max_memory_allocated", "wmtp bench peers --shape lora7b"):
        assert text in md
    assert md.count("not measured") >= 2


def test_the_command_refuses_what_it_cannot_measure(tmp_path):
    runner = CliRunner()
    base = ["bench", "peers", "--shape", "full1b", "--out", str(tmp_path)]
    for extra, message in (
        (["--micro-batches", "two"], "give integers or best:SIDE"),
        (["--micro-batches", "best:hf"], "no measured row of hf"),
        (["--sides", "hf-peft"], "unknown side"),
    ):
        result = runner.invoke(app, [*base, *extra, "--set", "parallel.device='cpu'"])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_the_summariser_compares_a_timed_run_with_bench_step(tmp_path):
    """`run_vs_bench_step`: a real `wmtp run` against a real `wmtp bench step` of the same recipe
    (the tiny one), both on the CPU, packed and padded: the ratio of the positions each computes
    over per second (the run's rows, padding included, as its metrics log them; bench step's
    rows are all ``seq_len`` long)."""
    import shutil
    import statistics

    from tests.train.train_helpers import TINY

    summarise = summarise_module()
    cli = [sys.executable, "-m", "wmtp.cli"]
    for packing in ("true", "false"):
        folder = tmp_path / packing
        same = ["--set", f"data.packing={packing}"]
        bench = [*cli, "bench", "step", str(TINY), *same, "--warmup", "1", "--repeats", "2"]
        subprocess.run([*bench, "--out", str(folder)], check=True, cwd=REPO, capture_output=True)
        steps = ["--set", "training.max_steps=9", "--set", "training.log_every=1"]
        steps += ["--set", "training.eval_every=0", "--set", "training.schedule.warmup_steps=1"]
        runs = ["--set", f"experiment.runs_dir='{folder / 'runs'}'"]
        subprocess.run([*cli, "run", str(TINY), *same, *steps, *runs], check=True, cwd=REPO,
                       capture_output=True)  # fmt: skip
        shutil.copy(next((folder / "runs").glob("tiny/2*/metrics.jsonl")), folder)
        timed = summarise.run_vs_step(folder)
        records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in records if "tokens_per_s" in r and r["step"] > 5]
        result = json.loads((folder / "tiny.json").read_text())
        assert timed["run_steps"] == 4 == len(logged)
        for r in logged:  # the rows' positions, as the run's batches had them
            assert r["tokens"] <= r["row_tokens"] <= result["config"]["micro_batch_size"] * 1024
        positions = statistics.median(r["row_tokens"] / r["step_time_s"] for r in logged)
        assert timed["ratio"] == positions / result["tokens_per_s"] > 0
        fill = statistics.median(r["tokens"] / r["row_tokens"] for r in logged)
        assert 0.5 < timed["run_fill"] == fill <= 1


def summarise_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarise", REPO / "bench/summarise_h200.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_summariser_reports_float8_against_bf16(tmp_path, monkeypatch):
    """The float8 keys, from the files bench/h200.sh's stages float8 and float8_loss write, made
    by the real commands on the CPU. The CPU cannot run float8, so there the side
    wmtp-1head+float8 is a row saying why, and its ratio stays not measured; stand-ins for a
    GPU's float8 files then follow: a copy of the bf16 row at 1.5x its tokens/s, a second plain
    `bench step`, and the `wmtp run`'s own metrics with every loss 1% higher, cut after step 5.
    Each figure must be the ratio of those files."""
    from tests.train.train_helpers import TINY, losses_of
    from wmtp.train.runner import run_recipe

    _device_figures(monkeypatch)
    _cli(tmp_path, "full1b", "--micro-batches", "2", "--sides", "wmtp-1head,hf,wmtp-1head+float8")
    summarise = summarise_module()
    refused = summarise.summarise(tmp_path)
    assert refused["float8_ratio_vs_bf16"] is None
    assert "wmtp-1head+float8" in refused["not_measured"]["float8_ratio_vs_bf16"]
    assert refused["unmeasured_sides"]["full1b"]["wmtp-1head+float8"] == (
        "not measured: parallel.float8 needs a CUDA GPU of compute capability 8.9 or newer "
        "(H100, H200, L40S); this run is on cpu"
    )

    path = tmp_path / "full1b.json"
    results = json.loads(path.read_text())
    bf16, peer = (summarise.best(results["rows"], side) for side in ("wmtp-1head", "hf"))
    stand_in = bf16 | {"side": "wmtp-1head+float8", "tokens_per_s": 1.5 * bf16["tokens_per_s"]}
    path.write_text(json.dumps(results | {"rows": [*results["rows"], stand_in]}))

    folder = tmp_path / "float8"
    for mode in ("bf16", "float8"):
        step = ["bench", "step", str(TINY), "--warmup", "0", "--repeats", "1"]
        result = CliRunner().invoke(app, [*step, "--out", str(folder / f"lora7b_{mode}")])
        assert result.exit_code == 0, result.output
    sets = ["training.max_steps=6", "training.log_every=1", "training.eval_every=0"]
    sets += ["training.micro_batch_size=1", "training.schedule.warmup_steps=1"]
    sets += [f"experiment.runs_dir='{tmp_path / 'runs'}'"]
    run = run_recipe(TINY, sets, console=False)
    (folder / "loss_bf16.jsonl").write_text((run.run_dir / "metrics.jsonl").read_text())
    losses = dict(losses_of(run.run_dir))
    assert sorted(losses) == list(range(1, 7))
    higher = [json.dumps({"step": s, "loss": 1.01 * loss}) for s, loss in losses.items() if s < 6]
    (folder / "loss_float8.jsonl").write_text("\n".join(higher) + "\n")

    summary = summarise.summarise(tmp_path)
    assert summary["float8_ratio_vs_bf16"] == pytest.approx(1.5)
    assert summary["float8_ratio_vs_best_peer"] == pytest.approx(
        1.5 * bf16["tokens_per_s"] / peer["tokens_per_s"]
    )

    def bench_step_tps(mode: str) -> float:
        return json.loads((folder / f"lora7b_{mode}" / "tiny.json").read_text())["tokens_per_s"]

    ratio = bench_step_tps("float8") / bench_step_tps("bf16")
    assert summary["lora7b_float8_ratio_vs_bf16"] == ratio
    assert summary["float8_loss"]["steps"] == [1, 5]  # the steps both runs logged (up to 20)
    assert summary["float8_loss_rel_diff"] == pytest.approx(0.01)
    for key in ("float8_ratio_vs_bf16", "lora7b_float8_ratio_vs_bf16", "float8_loss_rel_diff"):
        assert key not in summary["not_measured"], key
    md = summarise.markdown(summary)
    assert "float8 / bf16 tokens/s (wmtp one head, compiled, same micro-batch) | 1.50x |" in md
    assert "mean of the last 20 steps) | +1.00% |" in md


def test_the_sides_option_names_every_side():
    """`wmtp bench peers --sides`'s help lists the sides by hand (the CLI does not import torch to
    draw it): every side of every shape is in it."""
    import re
    import typing

    from wmtp.commands.bench import peers as peers_command

    hints = typing.get_type_hints(peers_command, include_extras=True)
    (option,) = hints["sides"].__metadata__
    named = set(re.findall(r"[\w+-]+", option.help))
    assert {side for sides in peers.SIDES.values() for side in sides} <= named


def test_the_recipe_as_written_is_the_four_head_rows_with_its_compile_setting():
    """The summariser's "recipe as written" follows the LoRA recipe's own ``parallel.compile``:
    the constant it keeps agrees with the recipe, and on a GPU only four-head rows with that
    setting count (rows measured before the recipe changed do not), eager ones on the CPU."""
    from wmtp.recipe import load_recipe

    summarise = summarise_module()
    parallel = load_recipe(REPO / "recipes/baseline.toml").recipe.parallel
    assert parallel.compiles("cuda") == summarise.AS_WRITTEN_COMPILES_ON_CUDA
    assert not parallel.compiles("cpu")

    def row(side: str, compiled: bool, tokens_per_s: float) -> dict:
        config = {"compile": compiled}
        return {"side": side, "error": None, "tokens_per_s": tokens_per_s, "config": config}

    rows = [
        row("wmtp-4heads", False, 8.0),  # the recipe before it compiled
        row("wmtp-4heads+compile", True, 11.0),
        row("wmtp-4heads+float8", True, 14.0),  # opt-in, never "as written"
        row("wmtp-1head", True, 12.0),
    ]
    on_gpu = summarise.as_written({"device": "NVIDIA H200", "rows": rows})
    assert on_gpu["tokens_per_s"] == 11.0
    assert summarise.as_written({"device": "cpu", "rows": rows})["tokens_per_s"] == 8.0


def test_float8_lora_is_compared_with_the_best_peer_and_its_memory_at_the_same_batch():
    summarise = summarise_module()

    def row(side: str, micro_batch: int, tokens_per_s: float, gib: float) -> dict:
        figures = {"tokens_per_s": tokens_per_s, "peak_memory_gib": gib, "error": None}
        return {"side": side, "micro_batch": micro_batch, **figures}

    results = {
        "sides": ["wmtp-4heads", "hf-peft", "hf-peft+compile"],
        "rows": [
            row("wmtp-4heads", 4, 9.0, 18.0),
            row("hf-peft", 8, 8.0, 24.0),
            row("hf-peft+compile", 4, 10.0, 20.0),
            row("hf-peft+compile", 8, 10.5, 26.0),
        ],
    }
    lora = {"micro_batch": 4, "float8": {"tokens_per_s": 14.0, "peak_memory_gib": 19.0}}
    vs_peer = summarise.float8_lora7b_vs_peer(lora, results)
    assert vs_peer == {
        "best_peer": "hf-peft+compile at micro-batch 8",
        "ratio_vs_best_peer": 14.0 / 10.5,
        "peak_memory_ratio_vs_peer": 19.0 / 20.0,
    }


def test_a_compile_side_is_not_measured_twice_where_the_recipe_already_compiles(tmp_path):
    """The production LoRA recipe compiles its blocks on CUDA as written (compile = "auto"), so
    there wmtp-4heads+compile would time the same step as wmtp-4heads: its row says so instead.
    Here the CPU stands in with parallel.compile = true."""
    compiled = (*TINY["lora7b"], "parallel.compile=true")
    results = peers.run_shape(
        "lora7b", tmp_path, sides=["wmtp-4heads+compile"], micro_batches=[1],
        overrides=compiled, log=lambda line: None,
    )  # fmt: skip
    (row,) = results["rows"]
    assert row["error"] == (
        "not measured: the recipe as written compiles its blocks here: the side wmtp-4heads"
    )


def test_wmtp_is_measured_without_checkpointing_as_the_peers_are(tmp_path):
    """The peers' no-checkpointing sides have a wmtp side of the same setting: the recipe with
    parallel.activation_checkpointing = false (the recipe as written recomputes one block in 11),
    and its best row is wmtp's best setting beside the recipe as written."""
    results = peers.run_shape(
        "lora7b", tmp_path, sides=["wmtp-4heads", "wmtp-4heads+no-checkpointing"],
        micro_batches=[1], warmup=0, repeats=1, overrides=TINY["lora7b"], log=lambda line: None,
    )  # fmt: skip
    written, without = results["rows"]
    assert written["error"] is None and without["error"] is None
    assert written["config"]["activation_checkpointing"] == 11
    assert without["config"]["activation_checkpointing"] is False
    rows = [written, without | {"tokens_per_s": written["tokens_per_s"] + 1}]
    summarise = summarise_module()
    assert summarise.best_setting(rows, "wmtp-4heads")["side"] == "wmtp-4heads+no-checkpointing"
    # float8 is opt-in, set against float8 peers on its own: never wmtp's best bf16 setting
    faster = {
        "side": "wmtp-4heads+no-checkpointing+float8",
        "tokens_per_s": 10 * written["tokens_per_s"],
    }
    rows.append(without | faster)
    assert summarise.best_setting(rows, "wmtp-4heads")["side"] == "wmtp-4heads+no-checkpointing"


def test_the_step_summariser_reads_its_figures_from_the_stages_files(tmp_path):
    """bench/summarise_step.py on the files an H200 call wrote (bench/results/h200_step_20261204):
    each figure is the ratio of those files' numbers, the 128k one as summarise_h200 reads a
    four-heads row against a one-head row."""
    raw = REPO / "bench/results/h200_step_20261204"
    script = str(REPO / "bench" / "summarise_step.py")
    subprocess.run([sys.executable, script, "--results", str(raw), "--out", str(tmp_path)],
                   check=True, capture_output=True)  # fmt: skip
    summary = json.loads((tmp_path / "h200_step.json").read_text())

    def step(path):
        return json.loads(next((raw / path).glob("*.json")).read_text())

    for shape in ("lora7b", "full1b"):
        before, after = step(f"ab/{shape}_before"), step(f"ab/{shape}_after")
        assert summary["ab"][shape]["ratio"] == after["tokens_per_s"] / before["tokens_per_s"]
    verifiable, baseline = step("verifiable_step/verifiable"), step("verifiable_step/baseline")
    ratio = verifiable["step"]["median_ms"] / baseline["step"]["median_ms"]
    assert summary["verifiable_step_ratio_vs_baseline"] == ratio
    rows = json.loads((raw / "vocab128k/full1b.json").read_text())["rows"]
    assert summary["mtp4_128k"] == summarise_module().mtp4(rows)
    assert set(summary["profiles"]) == {"full1b", "lora7b_compile"}
    assert "## What the figures say" not in (tmp_path / "h200_step.md").read_text()


def test_the_step_summariser_pairs_every_tagged_step_with_its_earlier_code(tmp_path):
    """bench/h200.sh's stage ab with AB_TAG (the float8 step beside the bf16 one): each
    ``ab/<step>_after`` against its ``_before``, as an H100 call wrote them
    (bench/results/h100_lookahead_20261206)."""
    raw = REPO / "bench/results/h100_lookahead_20261206"
    script = str(REPO / "bench" / "summarise_step.py")
    subprocess.run([sys.executable, script, "--results", str(raw), "--out", str(tmp_path)],
                   check=True, capture_output=True)  # fmt: skip
    summary = json.loads((tmp_path / "h200_step.json").read_text())
    assert set(summary["ab"]) == {"full1b", "full1b_float8"}
    for name in summary["ab"]:
        before, after = (json.loads((raw / f"ab/{name}_{when}/full1b.json").read_text())
                         for when in ("before", "after"))  # fmt: skip
        assert summary["ab"][name]["ratio"] == after["tokens_per_s"] / before["tokens_per_s"]
    assert "full1b_float8 (micro-batch 16)" in (tmp_path / "h200_step.md").read_text()


def test_the_step_summariser_sets_each_memory_budget_variant_against_the_best_lora_peer(tmp_path):
    """memory_budget/<variant>/ (a `wmtp bench step` result; here the H200 call's LoRA step)
    against the best LoRA peer of an h200.json (the committed one): tokens/s and memory ratios,
    and the variant named the recipe as written as the LoRA target's figures."""
    import shutil

    raw = REPO / "bench/results/h200_step_20261204/ab/lora7b_after"
    shutil.copytree(raw, tmp_path / "memory_budget" / "mb8_as_written")
    script = str(REPO / "bench" / "summarise_step.py")
    peers = REPO / "bench/results/h200.json"
    subprocess.run([sys.executable, script, "--results", str(tmp_path), "--peers", str(peers),
                    "--as-written", "mb8_as_written"], check=True, capture_output=True)  # fmt: skip
    summary = json.loads((tmp_path / "h200_step.json").read_text())
    budget = summary["lora7b_memory_budget"]
    peer = json.loads(peers.read_text())["lora7b_best"]["peer"]
    row = json.loads((raw / "baseline.json").read_text())
    variant = budget["variants"]["mb8_as_written"]
    assert budget["peer"] == peer and variant["micro_batch"] == 8
    assert variant["ratio_vs_peer"] == row["tokens_per_s"] / peer["tokens_per_s"]
    assert variant["peak_memory_ratio_vs_peer"] == row["peak_memory_gib"] / peer["peak_memory_gib"]
    assert summary["lora7b_as_written_ratio_vs_best_peer"] == variant["ratio_vs_peer"]
    memory = summary["lora7b_as_written_peak_memory_ratio_vs_peer"]
    assert memory == variant["peak_memory_ratio_vs_peer"]
    md = (tmp_path / "h200_step.md").read_text()
    assert "| **mb8_as_written** (the recipe as written) | 8 | 1 | True |" in md


def test_the_lora_recipe_as_written_comes_from_its_bench_step_at_its_own_accumulation(tmp_path):
    """summarise_h200 --from-summary (the committed h200.json) --step (an h200_step.json with the
    recipe as written): the LoRA target's figures are the step's, every other figure stays."""
    step_dir = tmp_path / "step"
    raw = REPO / "bench/results/h200_step_20261204"
    peers = REPO / "bench/results/h200.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "summarise_step.py"), "--results",
                    str(raw), "--out", str(tmp_path), "--peers", str(peers), "--as-written",
                    "mb1_every_11th_accum32"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([sys.executable, str(REPO / "bench" / "summarise_h200.py"), "--from-summary",
                    str(peers), "--step", str(tmp_path / "h200_step.json"), "--out",
                    str(step_dir)], check=True, capture_output=True)  # fmt: skip
    before, after = json.loads(peers.read_text()), json.loads((step_dir / "h200.json").read_text())
    row = json.loads((raw / "memory_budget/mb1_every_11th_accum32/baseline.json").read_text())
    peer = before["lora7b_best"]["peer"]
    ratio = row["tokens_per_s"] / peer["tokens_per_s"]
    assert after["lora7b_as_written_ratio_vs_best_peer"] == ratio
    memory = row["peak_memory_gib"] / peer["peak_memory_gib"]
    assert after["lora7b_as_written_peak_memory_ratio_vs_peer"] == memory
    assert after["lora7b_as_written"]["grad_accum"] == row["config"]["grad_accum_steps"] == 32
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed <= {"lora7b_as_written_ratio_vs_best_peer"}
    md = (step_dir / "h200.md").read_text()
    headline = "32 accumulated, checkpointing 11; `wmtp bench step`, h200_step.md) / best peer"
    assert f"{headline} | {ratio:.2f}x" in md


def test_a_float8_peer_is_set_against_wmtps_float8_only():
    """torchtitan in float8 (titan+float8) is no bf16 peer: the bf16 ratio takes the fastest bf16
    peer, wmtp's float8 ratio the fastest of all peers."""
    summarise = summarise_module()

    def row(side: str, tokens_per_s: float) -> dict:
        figures = {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s / 200, "peak_memory_gib": 40.0}
        return {
            "side": side,
            "micro_batch": 16,
            "error": None,
            "step": {"median_ms": 1.0},
        } | figures

    rows = [row("wmtp-1head", 100.0), row("wmtp-1head+float8", 118.0), row("hf+liger", 93.0)]
    rows += [row("titan", 99.0), row("titan+float8", 115.0)]
    results = {"sides": [r["side"] for r in rows], "rows": rows}
    assert summarise.best_peer(results)["side"] == "titan"
    assert summarise.best_peer(results, with_float8=True)["side"] == "titan+float8"
    figures = summarise.float8_full1b(results)
    assert figures["ratio_vs_best_peer"] == pytest.approx(118.0 / 115.0)
    assert figures["best_peer"] == "titan+float8 at micro-batch 16"
