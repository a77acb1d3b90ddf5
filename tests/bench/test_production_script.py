"""``bench/production.sh`` (issue 23's four-GPU run of the production recipes) end to end on the
CPU: four and two gloo processes, tiny models, the stand-in 32,000-piece tokenizer
(``WMTP_PRODUCTION_CPU=1``). The stages a four-GPU machine runs in one call are known to run,
and the 4 -> 2 resume to continue the 4-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.train.train_helpers import REPO

pytestmark = [pytest.mark.minutes(2), pytest.mark.long]


@pytest.mark.slow
def test_the_four_gpu_production_script_runs_on_the_cpu(tmp_path):
    from wmtp.data.humaneval import ensure_humaneval

    ensure_humaneval(REPO / "storage" / "datasets" / "humaneval", progress=False)
    tokenizer_dir = tmp_path / "llama2-7b-mtp"
    subprocess.run(
        [sys.executable, "bench/standin_tokenizer.py", str(tokenizer_dir)],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    out = tmp_path / "out"
    env = dict(
        os.environ,
        WMTP_PRODUCTION_CPU="1",
        WMTP_STANDIN_TOKENIZER=str(tokenizer_dir / "tokenizer.model"),
        OUT=str(out),
        WORK=str(tmp_path / "work"),
    )
    stages = ["critic", "verifiable", "baseline", "resume", "summary"]
    done = subprocess.run(
        ["bash", "bench/production.sh", *stages], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=560,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "production.json").read_text())
    assert sum(p.is_file() for p in out.rglob("*")) <= 8  # what the device machine brings back
    assert {label: s["rc"] for label, s in report["steps"].items()} == dict.fromkeys(
        ["critic", "verifiable", "baseline", "resume"], 0
    ), done.stdout[-3000:]
    for run in ("critic", "verifiable", "baseline"):  # every rank of four trained
        assert report["runs"][run]["gpus"] == 4 and report["runs"][run]["tokens_per_s"] > 0, run
    resumed = report["resume_4_to_2"]  # bf16 on 2 ranks repeats the 4-rank run's steps
    assert resumed["steps"] == 10 and resumed["largest_loss_difference"] < 1e-3, resumed
