"""``wmtp.bench.trace``: a Chrome trace's GPU time by kind, idle time and the host phase behind it.

The GPU's own traces come from the device runs; here traces in torch.profiler's Chrome format,
written out event by event, pin down the arithmetic: union of overlapping kernels, the idle
intervals between them and the host range (``wmtp.*``) running meanwhile."""

from __future__ import annotations

import gzip
import json

import pytest

from wmtp.bench.trace import device_kernels, gpu_timeline, kernel_kind, timeline_text


def event(cat: str, name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def step_trace() -> dict:
    """Host: the optimizer phase from 1000 to 1400 us, with its own operator inside. Device: two
    overlapping matmuls (0-500, 400-900), then nothing until a fused Adam kernel at 1300."""
    return {
        "traceEvents": [
            event("user_annotation", "wmtp.forward_backward", 0, 1000),
            event("user_annotation", "wmtp.optimizer", 1000, 400),
            event("cpu_op", "Optimizer.step#AdamW.step", 1010, 380),
            event("cpu_op", "aten::mm", 5, 3),  # shorter than a stall: never the phase
            event("kernel", "nvjet_tst_128x256_64x4_2x1_v_bz_coopB_NNT", 0, 500),
            event("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32", 400, 500),
            event("kernel", "void at::native::(anonymous)::fused_adamw_kernel", 1300, 100),
            {"ph": "i", "cat": "kernel", "name": "an instant event", "ts": 50},
        ]
    }


def test_idle_time_is_the_window_less_the_union_of_kernels_and_is_charged_to_the_host_phase():
    summary = gpu_timeline(step_trace())
    assert summary["window_us"] == 1400
    assert summary["busy_us"] == 1000  # 0-900 (the matmuls' union) and 1300-1400
    assert summary["idle_us"] == summary["stall_us"] == 400
    assert summary["device_us_by_kind"] == {"matrix products": 1000, "optimizer": 100}
    assert summary["stall_us_by_host_phase"] == {"wmtp.optimizer / Optimizer.step#AdamW.step": 400}
    (stall,) = summary["longest_stalls"]
    assert stall["us"] == 400
    assert stall["previous"].startswith("sm90_xmma") and "adamw" in stall["next"]
    text = timeline_text(summary, per=2)
    assert "idle      0.20 ms (28.6%)" in text
    assert "0.20 ms  wmtp.optimizer / Optimizer.step#AdamW.step" in text


def test_device_kernels_are_the_kernel_events_in_the_order_they_started():
    names = [k["name"][:10] for k in device_kernels(step_trace())]
    assert names == ["nvjet_tst_", "sm90_xmma_", "void at::n"]  # no host ranges, no instants


def test_a_gzipped_trace_file_reads_like_the_dict(tmp_path):
    path = tmp_path / "step.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(step_trace(), f)
    assert gpu_timeline(path) == gpu_timeline(step_trace())


def test_a_trace_without_kernels_says_so():
    host_only = {"traceEvents": [event("cpu_op", "aten::mm", 0, 10)]}
    assert gpu_timeline(host_only) == {}
    assert timeline_text({}) == "no device kernels in the trace\n"


@pytest.mark.parametrize(
    "name, kind",
    [
        ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0", "Triton (Inductor's fused kernels)"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention"),
        ("ncclDevKernel_AllGather_RING_LL", "communication"),
        ("Memcpy HtoD (Pinned -> Device)", "copies and fills"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::mul>",
            "other eager kernels",
        ),
    ],
)
def test_kernels_are_sorted_by_their_names(name, kind):
    assert kernel_kind(name) == kind


def test_the_trainers_step_marks_its_phases_in_a_real_profile(tmp_path):
    """A CPU profile of the trainer's step holds the ``wmtp.*`` ranges the reader looks for."""
    from tests.train.train_helpers import TINY
    from wmtp.bench.step import bench_step
    from wmtp.recipe import load_recipe

    recipe = load_recipe(TINY, ["parallel.device='cpu'", "data.max_length=32"]).recipe
    bench_step(recipe, label="tiny", warmup=0, repeats=1, profile=tmp_path / "p", profile_steps=1)
    with gzip.open(tmp_path / "p.trace.json.gz", "rt") as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    phases = ["next_batches", "to_device", "weights", "forward_backward", "figures", "grad_norm"]
    assert {f"wmtp.{p}" for p in [*phases, "optimizer"]} <= names
