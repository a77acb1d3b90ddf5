"""``--to hf`` of trained runs read by transformers itself (fp32), against wmtp's own next-token
logits: RoPE theta and Llama-3 scaling carried into ``config.json``, and LoRA adapters (scale
alpha / r = 4, dropout 0.1) merged. GQA (2 key/value heads for 4) is the tiny flavour's.

Tolerance: the same fp32 weights through two implementations (HF's rotate-half RoPE on permuted
q/k rows against wmtp's pairs, its SDPA call against wmtp's) differ by float32 rounding, ~1e-6 on
logits of size ~1; 1e-5 is ten times that. Each test also shows the setting under test moves the
logits by more than ten times the tolerance, so agreeing is not an accident.
"""

from __future__ import annotations

import json

import torch

from tests.export.export_helpers import export, logits, wmtp_model

PROMPT = torch.tensor([[256, *b"def fibonacci(n):\n    return n if n < 2 else fib(n - 1)\n" * 3]])
"""~170 positions: past the scaled run's original context of 64."""
TOLERANCE = 1e-5


def transformers_logits(folder, **config_changes) -> torch.Tensor:
    """Next-token logits of ``AutoModelForCausalLM`` on ``folder`` (fp32), ``config.json``
    changed as given first."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    for key, value in config_changes.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    with torch.no_grad():
        return model.eval()(PROMPT).logits


def test_rope_theta_and_llama3_scaling_reach_transformers(rope_run, tmp_path):
    out = tmp_path / "hf"
    assert export(rope_run, "--to", "hf", "--out", out, "--dtype", "float32").exit_code == 0
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 50_000.0
    assert rope["original_max_position_embeddings"] == 64 and rope["factor"] == 4.0
    want = logits(wmtp_model(rope_run), PROMPT)[:, :, 0]
    torch.testing.assert_close(transformers_logits(out), want, rtol=0, atol=TOLERANCE)
    unscaled = {"rope_type": "default", "rope_theta": 50_000.0}
    assert (transformers_logits(out, rope_parameters=unscaled) - want).abs().max() > 10 * TOLERANCE
    plain = {"rope_type": "default", "rope_theta": 10_000.0}
    assert (transformers_logits(out, rope_parameters=plain) - want).abs().max() > 10 * TOLERANCE


def test_merged_lora_in_transformers_is_the_trained_adapted_model(lora_run, lora_base, tmp_path):
    from wmtp.models.checkpoint import from_pretrained

    out = tmp_path / "hf"
    assert export(lora_run, "--to", "hf", "--out", out).exit_code == 0
    adapted = logits(wmtp_model(lora_run, fold_adapters=False), PROMPT)[:, :, 0]
    torch.testing.assert_close(transformers_logits(out), adapted, rtol=0, atol=TOLERANCE)
    base = logits(from_pretrained(lora_base, dtype="float32", attention="sdpa"), PROMPT)
    assert (base[:, :, 0] - adapted).abs().max() > 10 * TOLERANCE
