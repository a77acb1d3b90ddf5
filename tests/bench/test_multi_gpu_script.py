"""``bench/multi_gpu.sh`` (issue 23's two-GPU checks) run end to end on the CPU with two gloo
processes and tiny models (``WMTP_MULTI_GPU_CPU=1``), its summary held to what the GPU run must
show: the script a two-GPU machine gets in one call is known to run, and its checks to pass."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.train.train_helpers import REPO

pytestmark = [pytest.mark.minutes(3), pytest.mark.long]


@pytest.mark.slow
def test_the_two_gpu_script_runs_on_the_cpu_and_every_check_holds(tmp_path):
    from wmtp.data.humaneval import ensure_humaneval

    ensure_humaneval(
        REPO / "storage" / "datasets" / "humaneval", progress=False
    )  # the script needs it
    out = tmp_path / "out"
    env = dict(os.environ, WMTP_MULTI_GPU_CPU="1", OUT=str(out), WORK=str(tmp_path / "work"))
    done = subprocess.run(
        ["bash", "bench/multi_gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=560,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "multi_gpu.json").read_text())
    # what the device machine brings back (8 files at most): the logs and runs in one archive
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "multi_gpu.json", "multi_gpu.md", "results.tar.gz", "steps.jsonl"
    ]  # fmt: skip
    # a rank's RunError exits 2 as one process's would; a rank killed by a signal, 1
    expected = {"fault_raise": 2, "fault_sigkill": 1}
    failed = {k: s["rc"] for k, s in report["steps"].items() if s["rc"] != expected.get(k, 0)}
    assert not failed, (failed, done.stdout[-3000:])
    assert report["parity"]["steps"] == 6 and report["parity"]["max_abs"] < 1e-5  # 1 vs 2 ranks
    two_gpu = report["strategies"]
    assert {s["rc"] for s in two_gpu.values()} == {0}
    assert two_gpu["shard_grad_op"]["losses"][0] == pytest.approx(report["parity"]["first_loss"][1])
    verifiable = report["verifiable"]
    assert verifiable["rc"] == 0 and verifiable["steps_logged"] == 8
    assert verifiable["rank_state"]["identical"] is True, verifiable["rank_state"]
    for label, resumed in report["checkpoints"].items():  # 2 -> 1, 2 -> CPU, 1 -> 2
        assert resumed["rc"] == 0 and resumed["loss_gap_steps_3_4"]["max_abs"] < 1e-5, label
        assert resumed["export_vs_original"]["max_abs_diff"] < 1e-5, label
    for kind, fault in report["faults"].items():  # one clear message, no hang, no traceback
        assert fault["rc"] == expected[f"fault_{kind}"] and not fault["timed_out"], (kind, fault)
        assert fault["error_lines"] == 1 and fault["names_rank1"], (kind, fault)
        assert fault["python_tracebacks_of_workers"] == 0, (kind, fault)
