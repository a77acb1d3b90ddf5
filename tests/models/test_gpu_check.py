"""The GPU check script stays runnable: a tiny CPU dry run records numbers or reasons."""

from __future__ import annotations

import json

import pytest

from wmtp.models import gpu_check


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dry_run_on_cpu_records_errors_or_reasons(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main(["--device", "cpu", "--tiny", "--skip-model", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = report["attention"]
    assert {r["layout"] for r in rows} == {"causal", "padded", "packed"}
    assert all(("out_rel" in r) != ("error" in r) for r in rows)
    sdpa = [r for r in rows if r["backend"] == "sdpa"]
    assert len(sdpa) == 6 and all(r["out_rel"] < 2e-2 and r["grad_rel"] < 5e-2 for r in sdpa)
    flash = [r for r in rows if r["backend"] == "flash_attn"]
    assert all("flash_attn" in r["error"] for r in flash)
