"""Where `wmtp bench` writes (--out), checked before anything is measured; what it writes for
figures the CPU does not measure; how it names processes that are not GPUs."""

import importlib.util
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.train.train_helpers import REPO, TINY
from wmtp.cli import app

SMALL = ["parallel.device='cpu'", "data.max_length=32", "training.micro_batch_size=2"]
SETS = [a for s in SMALL for a in ("--set", s)]
QUICK = ["--warmup", "0", "--repeats", "1"]
DECODE = ["bench", "decode", "--flavour", "tiny", "--prompts", "1", "--new-tokens", "4"]


def wmtp(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wmtp.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("where", ["file", "/proc/x"])
def test_bench_step_refuses_an_out_it_cannot_make_before_measuring(tmp_path, where):
    mine = tmp_path / "file"
    mine.write_text("mine\n")
    out = str(mine) if where == "file" else where
    done = wmtp("bench", "step", str(TINY), *SETS, *QUICK, "--out", out)
    assert done.returncode == 2, done.stderr
    assert f"--out {out}" in done.stderr and "Traceback" not in done.stderr
    assert "tokens/s" not in done.stdout  # refused before the benchmark ran
    assert mine.read_text() == "mine\n"


def test_bench_step_on_the_cpu_writes_null_for_what_it_did_not_measure(tmp_path):
    done = wmtp("bench", "step", str(TINY), *SETS, *QUICK, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["mfu"] is None and result["peak_tflops"] is None
    assert result["peak_memory_gib"] is None and result["device"] == "cpu"
    assert "MFU" not in done.stdout and "GiB" not in done.stdout


def test_a_bench_step_result_that_cannot_be_written_at_the_end_is_a_located_error(
    tmp_path, monkeypatch
):
    """The folder taken away during the benchmark (here: a file put in its place): the figures
    are printed, and the error names --out, exit 2."""
    import wmtp.bench.step as step_module

    out = tmp_path / "results"
    real = step_module.bench_step

    def then_out_becomes_a_file(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_text("in the way\n")
        return result

    monkeypatch.setattr(step_module, "bench_step", then_out_becomes_a_file)
    done = CliRunner().invoke(app, ["bench", "step", str(TINY), *SETS, *QUICK, "--out", str(out)])
    assert done.exit_code == 2, done.output
    assert f"--out {out}: cannot write {out}/tiny.json" in done.output
    assert '"tokens_per_s"' in done.output and "Traceback" not in done.output


def test_every_bench_out_help_names_the_files_written():
    """No subcommand promises markdown it does not write (bench step writes JSON)."""
    for sub, writes_markdown in (("step", False), ("peers", False), ("attention", True)):
        done = CliRunner().invoke(app, ["bench", sub, "--help"], env={"COLUMNS": "300"})
        line = next(line for line in done.output.splitlines() if "--out" in line)
        assert ("markdown" in line or ".md" in line) == writes_markdown, line


@pytest.mark.slow
def test_bench_step_on_two_cpu_processes_says_so(tmp_path):
    done = wmtp("bench", "step", str(TINY), *SETS, *QUICK, "--nproc-per-node", "2",
                "--out", str(tmp_path), timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tiny on 2 CPU processes:" in done.stdout and "GPU" not in done.stdout
    result = json.loads((tmp_path / "tiny-2cpu.json").read_text())
    assert result["world_size"] == 2 and result["device"] == "cpu"


def test_bench_decode_keeps_a_file_it_did_not_write_unless_forced(tmp_path):
    mine = tmp_path / "f2"
    mine.write_text("mine\n")
    refused = CliRunner().invoke(app, [*DECODE, "--out", str(mine)])
    assert refused.exit_code == 2, refused.output
    assert f"--out {mine}: exists and is not an earlier `wmtp bench decode` result" in (
        refused.output
    )
    assert mine.read_text() == "mine\n"
    forced = CliRunner().invoke(app, [*DECODE, "--out", str(mine), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(mine.read_text())["flavour"] == "tiny"


def test_bench_decode_replaces_its_own_earlier_result_and_says_where_it_wrote(tmp_path):
    out = tmp_path / "decode.json"
    for _ in range(2):  # the second replaces the first's result without --force
        done = wmtp(*DECODE, "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert f"-> {out}" in done.stderr
        assert json.loads(done.stdout) == json.loads(out.read_text())  # stdout: the JSON alone


def _summarise_step():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("summ_step", REPO / "bench/summarise_step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def test_the_step_summariser_reads_results_whose_unmeasured_figures_are_null(tmp_path):
    step = {"tokens_per_s": 100.0, "mfu": None, "peak_tflops": None, "peak_memory_gib": None,
            "step": {"median_ms": 10.0, "min_ms": 9.0, "max_ms": 11.0},
            "config": {"micro_batch_size": 2}}  # fmt: skip
    for folder in ("ab/tiny_before", "ab/tiny_after", "memory_budget/as_written"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "tiny.json").write_text(json.dumps(step))
    summarise = _summarise_step()
    peer = {"side": "hf", "micro_batch": 2, "tokens_per_s": 50.0, "peak_memory_gib": 1.0}
    s = summarise.summarise(tmp_path, tmp_path / "profiles", peer, "as_written")
    assert s["lora7b_as_written_peak_memory_ratio_vs_peer"] is None
    text = summarise.markdown(s, "note")
    assert "MFU not measured, peak not measured" in text
