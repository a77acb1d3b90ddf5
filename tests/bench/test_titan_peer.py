"""torchtitan's Llama3 as a ``wmtp bench peers`` side (CPU, tiny shape, real torchtitan): the
same architecture as wmtp's one-head model, every weight trained, its loss the cross-entropy of
its logits on the peers' masked labels, its row by the one MFU formula, and a setting it cannot
run here one row saying why. The compiled side itself runs on GPUs only."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wmtp.bench import hf_peer, peers, titan_peer
from wmtp.cli import app
from wmtp.data.examples import IGNORE_INDEX
from wmtp.models.args import RopeScaling, mfu, param_count, training_flops_per_token

# Not a dev dependency (bench/torchtitan.txt says why). CI installs it and sets
# WMTP_TEST_TORCHTITAN=required, so there an install that cannot import fails these tests.
if os.environ.get("WMTP_TEST_TORCHTITAN") == "required":
    import torchtitan  # noqa: F401
else:
    pytest.importorskip("torchtitan")

SEQ = 32
TINY = (
    "parallel.device='cpu'",
    f"data.max_length={SEQ}",
    "model.policy.flavour='tiny'",
    "parallel.compile=false",
    "model.policy.vocab_size=512",
)
CPU = torch.device("cpu")
EAGER = titan_peer.TitanConfig("titan+no-compile", compile=False)


def _args():
    return peers.peer_args(peers.shape_recipe("full1b", heads=1, micro_batch=2, overrides=TINY))


@pytest.fixture
def built():
    args = _args()
    return args, titan_peer.build_side(args, EAGER, SEQ, CPU)


def test_the_titan_side_is_measured_by_the_one_formula_beside_wmtp(tmp_path):
    sets = [a for s in TINY for a in ("--set", s)]
    argv = ["bench", "peers", "--shape", "full1b", "--out", str(tmp_path), "--warmup", "0"]
    sides = ["--sides", "titan+no-compile,wmtp-1head", "--micro-batches", "2"]
    result = CliRunner().invoke(app, [*argv, "--repeats", "1", *sets, *sides])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "full1b.json").read_text())
    rows = {r["side"]: r for r in results["rows"]}
    assert [r["side"] for r in results["rows"]] == ["wmtp-1head", "titan+no-compile"]  # last
    titan, wmtp = rows["titan+no-compile"], rows["wmtp-1head"]
    assert titan["error"] is None and wmtp["error"] is None
    expected = training_flops_per_token(_args(), SEQ)
    assert titan["flops_per_token"] == wmtp["flops_per_token"] == expected
    assert titan["tokens_per_step"] == 2 * SEQ
    assert titan["tokens_per_s"] == pytest.approx(2 * SEQ / (titan["step"]["median_ms"] / 1e3))
    for row in (titan, wmtp):  # no peak off CUDA (or for a GPU the table lacks): no MFU
        peak = row["peak_tflops"]
        assert row["mfu"] == (None if peak is None else mfu(row["tokens_per_s"], expected, peak))
    assert titan["config"]["attention"] == "sdpa" and titan["config"]["compile"] is False
    assert results["versions"]["torchtitan"] == titan["config"]["torchtitan"] == "0.2.2"


def test_it_builds_wmtps_architecture(built):
    args, peer = built
    model = peer.model
    assert sum(p.numel() for p in model.parameters()) == param_count(args)
    assert model.output.weight is not model.tok_embeddings.weight  # untied, as wmtp
    assert len(model.layers) == args.n_layers
    block = model.layers["0"]
    assert block.feed_forward.w1.weight.shape == (args.hidden_dim, args.dim)
    assert block.attention_norm.eps == model.norm.eps == args.norm_eps
    assert block.attention.n_kv_heads == args.kv_heads
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights


def test_one_step_changes_every_weight(built):
    args, peer = built
    before = {n: p.detach().clone() for n, p in peer.model.named_parameters()}
    assert peer.step(*hf_peer.synthetic_batch(args.vocab_size, 2, SEQ, CPU)) == 2 * SEQ
    for name, p in peer.model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


def test_its_loss_is_the_cross_entropy_of_its_logits_on_the_peers_labels(built):
    args, peer = built
    tokens_BS, labels_BS = hf_peer.synthetic_batch(args.vocab_size, 2, SEQ, CPU)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # its mixed precision
        logits_BSV = peer.model(tokens_BS).float()
    # Hugging Face's own shift: position t predicts label t + 1; the prompt is no target
    expected = torch.nn.functional.cross_entropy(
        logits_BSV[:, :-1].reshape(-1, args.vocab_size),
        labels_BS[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    peer.step(tokens_BS, labels_BS)
    assert peer.losses[0].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    targets_BS = titan_peer.titan_labels(labels_BS)
    assert (targets_BS != IGNORE_INDEX).sum() == (labels_BS[:, 1:] != IGNORE_INDEX).sum()


def test_a_setting_it_cannot_run_here_is_one_row_with_the_reason(tmp_path):
    results = peers.run_shape(
        "full1b", tmp_path, sides=["titan"], micro_batches=[2], overrides=TINY,
        log=lambda line: None,
    )  # fmt: skip
    (row,) = results["rows"]
    assert (row["side"], row["micro_batch"]) == ("titan", None)
    assert row["error"] == (
        "not measured: torch.compile peers are measured on CUDA only (the CPU runs are tests)"
    )
    scaled = dataclasses.replace(_args(), rope_scaling=RopeScaling())
    assert titan_peer.unavailable(EAGER, scaled, CPU).startswith(
        "torchtitan's peer is built without RoPE scaling"
    )


def test_its_float8_training_swaps_every_block_linear_and_trains(tmp_path):
    """titan+float8: torchtitan's own float8 converter (torchao's Float8Linear, emulated on the
    CPU) in every block, the unembedding left in bf16; measured like any side."""
    from torchao.float8.float8_linear import Float8Linear

    args = _args()
    config = titan_peer.TitanConfig("titan+float8+no-compile", compile=False, float8=True)
    peer = titan_peer.build_side(args, config, SEQ, CPU)
    linears = {n: m for n, m in peer.model.named_modules() if isinstance(m, torch.nn.Linear)}
    swapped = {n for n, m in linears.items() if isinstance(m, Float8Linear)}
    assert swapped == set(linears) - {"output"} and len(swapped) == 7 * args.n_layers
    before = peer.model.layers["0"].feed_forward.w1.weight.detach().clone()
    assert peer.step(*hf_peer.synthetic_batch(args.vocab_size, 2, SEQ, CPU)) == 2 * SEQ
    assert not torch.equal(peer.model.layers["0"].feed_forward.w1.weight, before)

    results = peers.run_shape(
        "full1b", tmp_path, sides=["titan+float8+no-compile"], micro_batches=[2],
        overrides=TINY, warmup=0, repeats=1, log=lambda line: None,
    )  # fmt: skip
    (row,) = results["rows"]
    assert row["error"] is None and row["tokens_per_step"] == 2 * SEQ
    assert row["config"]["float8"] == "tensorwise, emulated"


def test_its_step_profiles_as_wmtps_does(tmp_path):
    """bench/profile_titan.py, as a user runs it (a subprocess), on the CPU: the step's operator
    tables by ``wmtp.bench.step.profile_calls``, the function behind ``wmtp bench step --profile``."""
    script = Path(__file__).parents[2] / "bench" / "profile_titan.py"
    sets = [a for s in TINY for a in ("--set", s)]
    argv = ["--micro-batch", "2", "--warmup", "1", "--steps", "2", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--device", "cpu", "--no-compile", *sets],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "titan_no-compile.txt").read_text()
    assert text.startswith("2 steps profiled")
    assert "by self host time:" in text and "aten::mm" in text  # the blocks' matmuls ran
    assert (tmp_path / "titan_no-compile.trace.json.gz").stat().st_size > 0
