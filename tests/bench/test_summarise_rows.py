"""bench/summarise_h200.py over synthetic rows written to a temporary folder: issue 20's figures
are ratios of the rows (change a row, the figure follows), and a figure whose side was not
measured is null with its reason, never absent, a crash or a value from elsewhere."""

import importlib.util
import json

import pytest

from tests.train.train_helpers import REPO

FULL1B_SIDES = ["wmtp-1head", "wmtp-4heads", "hf", "hf+liger"]
LORA7B_SIDES = ["wmtp-4heads", "wmtp-1head", "hf-peft", "hf-peft+compile"]


def _module():
    spec = importlib.util.spec_from_file_location("summarise", REPO / "bench/summarise_h200.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(side, b, tokens_per_s, *, flops=1e9, gib=10.0, compile=False):
    tokens = 2048 * b
    return {
        "side": side,
        "micro_batch": b,
        "error": None,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / 989e12,
        "peak_memory_gib": gib,
        "flops_per_token": flops,
        "step": {"median_ms": tokens / tokens_per_s * 1e3},
        "config": {"compile": compile},
    }


def oom(side, b):
    return {"side": side, "micro_batch": b, "error": "out of memory (CUDA)", "config": {}}


def write(folder, shape, sides, rows):
    results = {
        "device": "NVIDIA H200",
        "gpus": 1,
        "versions": {},
        "mfu_formula": "one formula",
        "memory_measure": "one measure",
        **{k: None for k in ("description", "seq_len", "model", "lora")},
        "sides": dict.fromkeys(sides, ""),
        "commands": [],
        "rows": rows,
    }
    (folder / f"{shape}.json").write_text(json.dumps(results))


def test_every_figure_is_a_ratio_of_the_measured_rows(tmp_path):
    full = [
        row("wmtp-1head", 8, 900.0, gib=30.0),
        row("wmtp-1head", 16, 1000.0, gib=40.0),
        row("wmtp-4heads", 16, 800.0, flops=1.2e9, gib=36.0),
        row("hf", 16, 600.0),
        row("hf+liger", 8, 700.0),
        row("hf+liger", 16, 750.0),
        oom("hf+liger", 32),
    ]
    lora = [
        row("wmtp-4heads", 4, 300.0, gib=20.0, compile=True),
        row("wmtp-4heads", 8, 320.0, gib=24.0, compile=True),
        row("hf-peft", 8, 250.0, gib=25.0),
        row("hf-peft+compile", 8, 280.0, gib=30.0),
    ]
    write(tmp_path, "full1b", FULL1B_SIDES, full)
    write(tmp_path, "lora7b", LORA7B_SIDES, lora)
    s = _module().summarise(tmp_path)
    assert s["best_peer"] == "hf+liger at micro-batch 16"
    assert s["ratio_vs_best_peer"] == 1000.0 / 750.0
    assert s["mfu_ntp"] == full[1]["mfu"]
    # four heads' step time over one head's, against their FLOP ratio, at one head's best batch
    time_ratio = full[2]["step"]["median_ms"] / full[1]["step"]["median_ms"]
    assert s["mtp4_step_time_over_flop_floor"] == pytest.approx(time_ratio / 1.2)
    assert s["mtp4_peak_memory_ratio_vs_ntp"] == 36.0 / 40.0
    assert s["lora7b_best_peer"] == "hf-peft+compile at micro-batch 8"
    assert s["lora7b_ratio_vs_best_peer"] == 320.0 / 280.0
    assert s["lora7b_peak_memory_ratio_vs_peer"] == 24.0 / 30.0
    assert not set(s["not_measured"]) & set(_module().FIGURE_SIDES)


def test_a_side_not_measured_gives_null_and_its_reason(tmp_path):
    full = [row("wmtp-1head", 16, 1000.0), oom("hf", 2), oom("hf+liger", 2)]
    write(tmp_path, "full1b", FULL1B_SIDES, full)  # no lora7b.json at all
    s = _module().summarise(tmp_path)
    assert s["mfu_ntp"] == full[0]["mfu"]
    for key in ("best_peer", "ratio_vs_best_peer"):
        assert s[key] is None and "hf (out of memory" in s["not_measured"][key], key
    floor = s["not_measured"]["mtp4_step_time_over_flop_floor"]
    assert s["mtp4_step_time_over_flop_floor"] is None and "wmtp-4heads (not measured" in floor
    for key in ("lora7b_ratio_vs_best_peer", "lora7b_peak_memory_ratio_vs_peer"):
        assert s[key] is None and "no lora7b.json" in s["not_measured"][key], key
