"""``auto`` attention from a recorded ranking: ranking bench rows, the table file, the choice.

The rankings come from GPU timings; here hand-made rows with times whose geometric means are worked
out by hand check the arithmetic, and the committed table is read as ``auto`` reads it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from wmtp.models.attention import choose_by_layout, resolve
from wmtp.models.attention_table import (
    PACKAGED_TABLE,
    TABLE_ENV,
    Ranking,
    find_ranking,
    rank_backends,
    record,
)
from wmtp.models.backends import NAMES

GPU = "Test GPU 80GB"


def row(shape: str, backend: str, ms: float | None, documents=()) -> dict:
    out = {"shape": shape, "backend": backend, "documents": list(documents)}
    return out | ({"fwd_bwd_ms": ms} if ms is not None else {"error": "not importable"})


def bench_result(device: str = GPU, dtype: str = "bfloat16") -> dict:
    """Two plain shapes, one packed; forced-kernel and auto rows that a ranking must ignore."""
    rows = [
        row("S1", "sdpa", 1.0),
        row("S1", "flex", 2.0),
        row("S1", "flash_attn", 1.2),
        row("S1", "sdpa[cudnn]", 0.5),  # a forced kernel: not a recipe backend
        row("S1", "auto", 0.1),
        row("S2", "sdpa", 4.0),
        row("S2", "flex", 2.0),
        row("S2", "flash_attn", 2.4),
        row("S1", "varlen", 1.0),  # runs on S1 only: left out of plain
        row("S2", "varlen", None),
        row("P1", "flex", 1.0, documents=(3, 5)),
        row("P1", "flash_attn", 0.8, documents=(3, 5)),
        row("P1", "sdpa", 8.0, documents=(3, 5)),
    ]
    return {"device": device, "dtype": dtype, "torch": "x", "rows": rows}


def test_ranking_is_the_geometric_mean_over_shapes_of_time_over_the_fastest():
    ranked = rank_backends(bench_result()["rows"])
    plain = {r["backend"]: r for r in ranked["plain"]}
    # S1 fastest recipe backend 1.0 (sdpa), S2 fastest 2.0 (flex); by hand:
    assert plain["sdpa"]["geomean_vs_fastest"] == pytest.approx(math.sqrt(1.0 * 2.0), abs=1e-4)
    assert plain["flex"]["geomean_vs_fastest"] == pytest.approx(math.sqrt(2.0 * 1.0), abs=1e-4)
    assert plain["flash_attn"]["geomean_vs_fastest"] == pytest.approx(1.2, abs=1e-4)
    assert plain["flash_attn"]["worst_vs_fastest"] == 1.2  # never fastest, never far: first
    assert ranked["plain"][0]["backend"] == "flash_attn"
    assert "varlen" not in plain and "auto" not in plain and "sdpa[cudnn]" not in plain
    assert [r["backend"] for r in ranked["packed"]] == ["flash_attn", "flex", "sdpa"]


def test_record_adds_or_replaces_one_entry_per_gpu_and_dtype(tmp_path):
    table = tmp_path / "table.json"
    record(table, bench_result(), "first")
    record(table, bench_result(device="Other GPU"), "other")
    record(table, bench_result(), "second")  # same GPU and dtype: replaces "first"
    entries = json.loads(table.read_text())["entries"]
    assert sorted((e["device"], e["source"]) for e in entries) == [
        ("Other GPU", "other"),
        (GPU, "second"),
    ]
    ranking = find_ranking(GPU, "bfloat16", [table])
    assert ranking.layouts["packed"][0] == "flash_attn" and "second" in ranking.source


def test_lookup_reads_the_user_table_first_and_falls_back_to_another_dtype(tmp_path, monkeypatch):
    table = tmp_path / "mine.json"
    record(table, bench_result(dtype="float16"), "mine")
    monkeypatch.setenv(TABLE_ENV, str(table))
    ranking = find_ranking(GPU, "bfloat16")  # only float16 recorded for this GPU: used
    assert ranking.dtype == "float16" and "mine.json" in ranking.source
    assert find_ranking("A GPU never measured", "bfloat16") is None


def test_the_choice_is_the_first_runnable_backend_per_layout():
    ranking = Ranking(GPU, "bfloat16", {"plain": ["flash_attn", "sdpa"], "packed": ["flex"]}, "t")
    assert choose_by_layout(ranking, set(NAMES))[:2] == ("flash_attn", "flex")
    without_fa = set(NAMES) - {"flash_attn"}
    plain, packed, why = choose_by_layout(ranking, without_fa)
    assert (plain, packed) == ("sdpa", "flex") and GPU in why
    same = Ranking(GPU, "bfloat16", {"plain": ["sdpa"], "packed": ["sdpa"]}, "t")
    assert choose_by_layout(same, set(NAMES))[:2] == ("sdpa", "sdpa")
    plain, packed, why = choose_by_layout(None, without_fa)
    assert (plain, packed) == ("sdpa", "flex") and "no ranking recorded" in why
    assert choose_by_layout(None, set(NAMES))[:2] == ("sdpa", "flash_attn")


def test_the_committed_table_names_only_known_backends_and_the_h100():
    entries = json.loads(PACKAGED_TABLE.read_text())["entries"]
    assert entries, "the committed table is empty"
    for entry in entries:
        for ranked in entry["layouts"].values():
            assert {r["backend"] for r in ranked} <= set(NAMES)
            ratios = [r["geomean_vs_fastest"] for r in ranked]
            assert ratios == sorted(ratios) and ratios[0] == 1.0
    h100 = find_ranking("NVIDIA H100 80GB HBM3", "bfloat16", [PACKAGED_TABLE])
    assert h100 is not None and set(h100.layouts) == {"plain", "packed"}


def test_a_broken_user_table_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv(TABLE_ENV, str(bad))
    with pytest.raises(ValueError, match=r"bad\.json: not a readable attention table"):
        find_ranking(GPU, "bfloat16")
    monkeypatch.delenv("WMTP_ATTENTION", raising=False)
    assert resolve("auto", "cpu", torch.float32, training=True).name == "sdpa"  # no table off CUDA


def wmtp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_records_a_ranking_from_an_earlier_result(tmp_path):
    result = tmp_path / "attention.json"
    result.write_text(json.dumps(bench_result()))
    table = tmp_path / "table.json"
    done = wmtp("bench", "attention", "--from-json", str(result), "--record", str(table))
    assert done.returncode == 0, done.stderr
    assert "packed: flash_attn 1.00x, flex 1.25x, sdpa 10.00x" in " ".join(done.stdout.split())
    assert find_ranking(GPU, "bfloat16", [table]).layouts["plain"][0] == "flash_attn"


def test_cli_refuses_a_file_that_is_not_a_bench_result_with_exit_2(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    done = wmtp(
        "bench", "attention", "--from-json", str(other), "--record", str(tmp_path / "t.json")
    )
    assert done.returncode == 2
    assert "not a `wmtp bench attention` result (no device, dtype)" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
