"""``--to meta`` read the way Meta's code reads it (``meta_reference``: ``Llama.build``'s
arguments, Meta's module names loaded strictly, Llama's forward written apart from wmtp's), and a
Meta checkpoint through wmtp and back.

Tolerance: the reference and wmtp run the same fp32 weights through the same arithmetic in a
different order (complex products for RoPE, an explicit softmax against SDPA), so their logits
(of size ~1) differ by float32 rounding, ~1e-6; 1e-5 is ten times that, far below what a wrong
name, a transposed projection, a RoPE permutation or a missing LoRA scale makes (>1e-2).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.export.export_helpers import TOKENS, export, logits, wmtp_model
from tests.export.meta_reference import build

LONG = torch.tensor([[256, *b"def fibonacci(n):\n    return n if n < 2 else fib(n - 1)\n" * 5]])
"""~290 positions: RoPE's slow frequencies turn far enough for Llama 3.1's scaling to show."""


@pytest.mark.parametrize("run_name", ["tiny_run", "lora_run"])
def test_metas_loader_reads_the_export_and_computes_wmtps_logits(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    out = tmp_path / "meta"
    result = export(run, "--to", "meta", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    params = json.loads((out / "params.json").read_text())
    assert None not in params.values()  # transformers' converter reads a present key as a number
    reference = build(out)
    trained = logits(wmtp_model(run, fold_adapters=False))  # a LoRA run's adapters apart
    assert reference.args.n_future_tokens == trained.shape[2] == 2
    torch.testing.assert_close(reference(TOKENS), trained, rtol=0, atol=1e-5)


def test_theta_llama31_scaling_and_any_ffn_width_reach_metas_loader(tmp_path):
    from wmtp.export.tokenizer_files import byte_level_tokenizer
    from wmtp.models.args import RopeScaling, flavour
    from wmtp.models.checkpoint import from_pretrained, save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    args = dataclasses.replace(
        flavour("tiny").with_vocab(259),
        rope_theta=50_000.0,
        rope_scaling=RopeScaling(),
        ffn_dim=100,
    )
    torch.manual_seed(0)
    source = save_wmtp(LlamaMTP(args, attention="sdpa"), tmp_path / "source")
    byte_level_tokenizer().save(str(source / "tokenizer.json"))
    out = tmp_path / "meta"
    result = export(source, "--to", "meta", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    reference = build(out)
    want = logits(from_pretrained(source, dtype="float32", attention="sdpa"), LONG)
    torch.testing.assert_close(reference(LONG), want, rtol=0, atol=1e-5)
    reference.args.use_scaled_rope = False  # the scaling is what makes them agree
    assert (reference(LONG) - want).abs().max() > 10 * 1e-5


def meta_checkpoint(folder, params: dict):
    """A Meta directory as Meta ships one: bf16 ``consolidated.00.pth`` with ``rope.freqs``,
    ``params.json`` with no runtime or null keys, the tokenizer beside it."""
    from wmtp.export.tokenizer_files import byte_level_tokenizer
    from wmtp.models.args import ModelArgs
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    model = LlamaMTP(ModelArgs.from_params_json(params), attention="sdpa")
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    folder.mkdir()
    torch.save({**state, "rope.freqs": torch.rand(8)}, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(params))
    byte_level_tokenizer().save(str(folder / "tokenizer.json"))
    return state


def test_a_bf16_meta_checkpoint_round_trips_bit_for_bit(tmp_path):
    params = {"dim": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 259}
    params |= {"multiple_of": 32, "norm_eps": 1e-5, "n_future_tokens": 2}
    state = meta_checkpoint(tmp_path / "meta", params)
    first, second = tmp_path / "first", tmp_path / "second"
    for source, out in ((tmp_path / "meta", first), (first, second)):
        result = export(source, "--to", "meta", "--out", out)
        assert result.exit_code == 0, result.output
        assert "(meta, bfloat16, 2 heads)" in result.flat
    written = torch.load(first / "consolidated.pth", weights_only=True)
    assert written.keys() == state.keys()  # Meta's names, rope.freqs (a buffer) left out
    for name, tensor in state.items():
        assert written[name].dtype == torch.bfloat16 and torch.equal(written[name], tensor), name
    exported = json.loads((first / "params.json").read_text())
    assert {k: exported[k] for k in params} == params
    assert exported.keys() - params.keys() <= {"rope_theta"}  # said, with Meta's default
    assert (second / "params.json").read_bytes() == (first / "params.json").read_bytes()
    again = torch.load(second / "consolidated.pth", weights_only=True)
    assert all(torch.equal(again[name], tensor) for name, tensor in written.items())
    assert build(second).args.n_kv_heads == 2
