"""`wmtp bench decode` on CPU with a tiny random model: the figures file and its fields."""

import json

import pytest
import torch
from typer.testing import CliRunner

from wmtp.cli import app


def test_bench_decode_writes_plain_and_speculative_figures(tmp_path):
    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "2", "--prompts", "1"]
    result = CliRunner().invoke(app, [*args, "--new-tokens", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["n_future_tokens"] == 2 and figures["batch_size"] == 1
    spec = figures["as_loaded"]["speculative"]
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and spec["tokens_per_forward"] >= 1.0
    assert figures["as_loaded"]["identical_outputs"] == "1/1"  # greedy: exactly the same


def test_bench_decode_sampled_reports_acceptance_per_head(tmp_path):
    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "3", "--prompts", "2"]
    sampled = ["--temperature", "0.8", "--top-p", "0.95", "--new-tokens", "12"]
    result = CliRunner().invoke(app, [*args, *sampled, "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["as_loaded"]
    assert figures["sampling"] == {"temperature": 0.8, "top_p": 0.95}
    assert set(figures["speculative"]["acceptance_by_head"]) == {"2", "3"}
    assert figures["identical_outputs"] is None  # sampled: other draws, nothing to compare


def test_bench_decode_profiles_plain_decoding_at_batch_one_and_at_the_evaluations_shape(tmp_path):
    """--profile: a trace and an operator table per case; the batched case's cache spans the
    model's context (the tiny flavour's 512), its rows' attention reading every position; the
    self-speculative cases run every head's layer (the tiny flavour's three heads)."""
    import gzip

    out, profile = tmp_path / "decode.json", tmp_path / "prof" / "plain"
    args = ["bench", "decode", "--flavour", "tiny", "--prompts", "1", "--new-tokens", "4"]
    more = ["--batch", "3", "--profile", str(profile), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *more])
    assert result.exit_code == 0, result.output
    cases = json.loads(out.read_text())["profiled"]
    speculative = ["batch1_speculative", "batch1_speculative_sampled"]
    assert cases == ["batch1", "batch3_context512", *speculative]
    for case in cases:
        trace = json.loads(
            gzip.decompress((tmp_path / "prof" / f"plain.{case}.trace.json.gz").read_bytes())
        )
        assert any(event.get("name") == "aten::mm" for event in trace["traceEvents"])
        table = (tmp_path / "prof" / f"plain.{case}.txt").read_text()
        assert "by self host time" in table and "aten::mm" in table
    batched = json.loads(
        gzip.decompress((tmp_path / "prof" / "plain.batch3_context512.trace.json.gz").read_bytes())
    )
    key_lengths = {
        shape[1][2]
        for event in batched["traceEvents"]
        if "attention" in event.get("name", "")
        and (shape := event.get("args", {}).get("Input Dims"))
        and len(shape) > 1
        and len(shape[1]) == 4
    }
    assert max(key_lengths) == 512, key_lengths  # the steps' (the prompt's forward is shorter)
    for case, draws in zip(speculative, (False, True), strict=True):
        trace = gzip.decompress((tmp_path / "prof" / f"plain.{case}.trace.json.gz").read_bytes())
        names = {event.get("name") for event in json.loads(trace)["traceEvents"]}
        assert ("aten::rand" in names) == draws  # sampled: each verification's uniforms


def test_bench_decode_needs_one_model_source():
    result = CliRunner().invoke(app, ["bench", "decode"])
    assert result.exit_code == 2 and "exactly one of --flavour and --checkpoint" in result.output


def test_bench_decode_against_hugging_face_generate_and_the_bandwidth_limit(tmp_path):
    """--peers: wmtp's generate and transformers' at batch 1 and at a sampled batch, same shape;
    the bytes a plain step reads are those of the peer's weights without its embedding."""
    from wmtp.bench.decode_peers import hf_peer
    from wmtp.eval.speed import model_from_flavour

    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "2", "--prompts", "1"]
    more = ["--new-tokens", "5", "--peers", "--batch", "3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *more])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    peers = figures["peers"]
    assert peers["batch"] == 3 and peers["sampling"] == {"temperature": 0.2, "top_p": 0.95}
    wmtp, hf = peers["sides"]["wmtp"], peers["sides"]["hf_dynamic_cache"]
    for side in (wmtp, hf, peers["sides"]["wmtp_speculative"]):
        for label in ("batch1", "batch3"):  # the median of the timed calls, within their range
            slowest, fastest = side[f"{label}_tokens_per_s_range"]
            assert 0 < slowest <= side[f"{label}_tokens_per_s"] <= fastest
    assert wmtp["batch3_ratio_vs_hf_dynamic_cache"] == round(
        wmtp["batch3_tokens_per_s"] / hf["batch3_tokens_per_s"], 3
    )
    compiled_sides = ("hf_static_cache_generate_compiled", "hf_static_cache_kept_generate_compiled")
    for compiled in compiled_sides:
        assert "CUDA only" in peers["sides"][compiled]["not_measured"]
    bandwidth = figures["bandwidth"]
    assert bandwidth["plain_fraction_of_limit"] is None  # the CPU's bandwidth is not measured
    model = model_from_flavour("tiny", n_future_tokens=2, dtype="bfloat16", device="cpu")
    peer = hf_peer(model)
    embedding = peer.get_input_embeddings().weight
    peer_bytes = sum(p.numel() * p.element_size() for p in peer.parameters())
    expected = peer_bytes - embedding.numel() * embedding.element_size()
    assert bandwidth["weight_bytes_per_step"] == expected


@pytest.mark.parametrize(
    ("extra", "cache"), [({}, "DynamicCache"), ({"cache_implementation": "static"}, "StaticCache")]
)
def test_the_hugging_face_peer_decodes_from_its_cache(extra, cache):
    """The peer generates as a user's ``generate`` does: the prompt once, then one new token per
    forward over its KV cache (dynamic, or static where asked). Built from the training peer
    (cache off), it re-ran its whole sequence every step until its generation config said
    otherwise: not the peer at its best."""
    from wmtp.bench.decode_peers import _hf_generate, hf_peer
    from wmtp.eval.generate import Sampling
    from wmtp.eval.speed import model_from_flavour

    model = model_from_flavour("tiny", n_future_tokens=2, dtype="float32", device="cpu")
    peer, seen = hf_peer(model), []
    forward = peer.forward

    def watched(*args, **kwargs):
        held = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.2x / earlier
        seen.append((kwargs["input_ids"].shape[1], type(held).__name__))
        return forward(*args, **kwargs)

    peer.forward = watched
    prompt_BS = torch.randint(0, model.args.vocab_size, (2, 7))
    out = _hf_generate(peer, prompt_BS, 4, Sampling(), **extra)
    assert out.shape == (2, 11)
    assert seen == [(7, cache), (1, cache), (1, cache), (1, cache)]


def test_the_hugging_face_peer_can_keep_one_static_cache_across_calls():
    """The kept-cache setting: every call decodes in the one ``StaticCache`` it was handed
    (reset before each), so a compiled forward meets the same tensors at every call, and it
    generates the dynamic cache's greedy tokens, call after call."""
    from wmtp.bench.decode_peers import _hf_generate, hf_peer, kept_static_cache_call
    from wmtp.eval.generate import Sampling
    from wmtp.eval.speed import model_from_flavour

    model = model_from_flavour("tiny", n_future_tokens=2, dtype="float32", device="cpu")
    peer, held = hf_peer(model), []
    forward = peer.forward

    def watched(*args, **kwargs):
        held.append(kwargs.get("cache", kwargs.get("past_key_values")))
        return forward(*args, **kwargs)

    prompt_BS = torch.randint(0, model.args.vocab_size, (2, 7))
    dynamic = _hf_generate(peer, prompt_BS, 5, Sampling())
    peer.forward = watched
    call = kept_static_cache_call(peer, prompt_BS, 5, Sampling())
    first, second = call(), call()
    assert torch.equal(first, dynamic) and torch.equal(second, dynamic)
    assert len(held) == 10 and len({id(cache) for cache in held}) == 1
    assert type(held[0]).__name__ == "StaticCache"


def test_the_decode_summariser_reads_every_figure_it_finds(tmp_path):
    """bench/summarise_decode.py over one real `wmtp bench decode --peers` file, its peers moved
    to decode_1b_peers.json as bench/h200_decode.sh's stages write them: the figures it holds,
    ratios taken from it, and "not measured" for the files that are missing."""
    import subprocess
    import sys
    from pathlib import Path

    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "2", "--prompts", "1"]
    more = ["--new-tokens", "3", "--agreeing-heads", "--peers", "--batch", "20", "--also-unfused"]
    out = ["--out", str(tmp_path / "decode_1b.json")]
    assert CliRunner().invoke(app, [*args, *more, *out]).exit_code == 0
    figures = json.loads((tmp_path / "decode_1b.json").read_text())
    peers_file = {"peers": figures.pop("peers")}
    (tmp_path / "decode_1b.json").write_text(json.dumps(figures))
    (tmp_path / "decode_1b_peers.json").write_text(json.dumps(peers_file))
    (tmp_path / "decode_7b.json").write_text(json.dumps(figures))  # the 7B stage's layout
    script = Path(__file__).resolve().parents[2] / "bench" / "summarise_decode.py"
    subprocess.run([sys.executable, script, "--results", str(tmp_path)], check=True)
    summary = json.loads((tmp_path / "h200_decode.json").read_text())
    assert summary["plain_tokens_per_s"] == figures["as_loaded"]["plain"]["tokens_per_s"]
    sides = peers_file["peers"]["sides"]
    expected = (
        sides["wmtp"]["batch20_tokens_per_s"] / sides["hf_dynamic_cache"]["batch20_tokens_per_s"]
    )
    assert summary["batch_best_hf"] == "hf_dynamic_cache"
    assert summary["batch20_ratio_vs_hf"] == expected
    speculative = sides["wmtp_speculative"]
    assert summary["batch_speculative_ratio_vs_plain"] == speculative["batch20_ratio_vs_wmtp"]
    assert summary["speculative_speedup_agreeing"] > 0
    agreeing = figures["agreeing_heads"]["speculative"]["speedup"]
    assert summary["speculative_speedup_agreeing_7b"] == agreeing
    assert summary["speculative_speedup_trained"] is None  # no trained model's file
    assert "decode_trained.json" in summary["not_measured"]["speculative_speedup_trained"]
    assert "humaneval_n20" in summary["not_measured"]["humaneval_n20_generation_s"]
    assert "batch20_ratio_vs_hf" not in summary["not_measured"]
    plain, unfused = (
        figures[k]["plain"]["tokens_per_s"] for k in ("as_loaded", "as_loaded_unfused")
    )
    assert summary["fused_projections_ratio"] == plain / unfused
    md = (tmp_path / "h200_decode.md").read_text()
    assert "HumanEval 164 x 20 x 512: generation (s) | not measured" in md
    hf = sides["hf_dynamic_cache"]
    slowest, fastest = hf["batch20_tokens_per_s_range"]
    ranges = next(line for line in md.splitlines() if line.startswith("Batch 20, tokens/s"))
    assert (
        f"hf_dynamic_cache {hf['batch20_tokens_per_s']:,.0f} ({slowest:,.0f}-{fastest:,.0f})"
        in ranges
    )
    # a second side, faster at batch 1 and slower at batch 20: each batch size has its own best
    faster_alone = hf | {
        "batch1_tokens_per_s": 2 * hf["batch1_tokens_per_s"],
        "batch20_tokens_per_s": hf["batch20_tokens_per_s"] / 2,
    }
    peers_file["peers"]["sides"]["hf_faster_alone"] = faster_alone
    (tmp_path / "decode_1b_peers.json").write_text(json.dumps(peers_file))
    subprocess.run([sys.executable, script, "--results", str(tmp_path)], check=True)
    summary = json.loads((tmp_path / "h200_decode.json").read_text())
    assert (summary["batch_best_hf"], summary["batch1_best_hf"]) == (
        "hf_dynamic_cache",
        "hf_faster_alone",
    )
    assert summary["batch20_ratio_vs_hf"] == expected
    wmtp_alone = sides["wmtp"]["batch1_tokens_per_s"]
    assert summary["batch1_ratio_vs_hf"] == wmtp_alone / faster_alone["batch1_tokens_per_s"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--flavour", "tiyn"], "unknown model flavour 'tiyn'; did you mean 'tiny'?"),
        (["--flavour", "tiny", "--n-future-tokens", "9"], "flavour 'tiny' has 4 layers"),
        (["--flavour", "tiny", "--prompts", "0"], "Invalid value for '--prompts'"),
        (["--flavour", "tiny", "--new-tokens", "0"], "Invalid value for '--new-tokens'"),
        (["--flavour", "tiny", "--out", "{tmp}"], "--out {tmp}: a folder; give the JSON file"),
        (["--checkpoint", "{tmp}", "--n-future-tokens", "2"], "a --checkpoint decodes with the"),
        (["--flavour", "tiny", "--set", "model.policy.path='/m'"], "a --flavour has none"),
    ],
)
def test_bench_decode_options_a_run_cannot_use_are_refused_before_it_runs(options, said, tmp_path):
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    result = CliRunner().invoke(app, ["bench", "decode", *options], terminal_width=200)
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, flat
    assert said.replace("{tmp}", str(tmp_path)) in flat and "Traceback" not in flat
    assert list(tmp_path.iterdir()) == []
