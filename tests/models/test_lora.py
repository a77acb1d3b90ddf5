"""LoRA: what trains, merge/unmerge equality, folding for export, adapters saved and loaded alone."""

from __future__ import annotations

import pytest
import torch

from wmtp.errors import CheckpointError
from wmtp.models.llama_mtp import LlamaMTP
from wmtp.models.lora import (
    LoRALinear,
    apply_lora,
    fold_lora,
    load_lora,
    lora_modules,
    lora_state_dict,
    merge_lora,
    save_lora,
    unmerge_lora,
)


def trained_lora_model(args, targets=("wq", "wv", "w2")):
    model = LlamaMTP(args, attention="sdpa")
    apply_lora(model, rank=4, alpha=8.0, targets=targets)
    with torch.no_grad():  # B starts at zero; give it values so the adapters matter
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model.eval()


def test_only_lora_parameters_train(tiny_args):
    model = LlamaMTP(tiny_args, attention="sdpa")
    before = model(torch.zeros(1, 3, dtype=torch.long))
    adapted = apply_lora(model, rank=4, alpha=8.0, targets=["wq", "w1"])
    assert len(adapted) == 2 * tiny_args.n_layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(adapted)
    # zero-initialised B: the adapted model computes exactly what the base did
    torch.testing.assert_close(model(torch.zeros(1, 3, dtype=torch.long)), before)
    model(torch.randint(0, tiny_args.vocab_size, (2, 5))).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if n.endswith("lora_A") or n.endswith("lora_B")
    )


def test_merge_and_unmerge_keep_outputs_and_restore_weights(tiny_args):
    model = trained_lora_model(tiny_args)
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 6))
    base = {n: p.clone() for n, p in model.named_parameters() if ".lora_" not in n}
    with torch.no_grad():
        adapted = model(tokens)
        merge_lora(model)
        merged = model(tokens)
        unmerge_lora(model)
        unmerged = model(tokens)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unmerged, adapted, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        if ".lora_" not in n:
            torch.testing.assert_close(p, base[n], atol=1e-6, rtol=0)


def test_merged_weight_is_base_plus_scaled_BA(tiny_args):
    model = trained_lora_model(tiny_args, targets=("wq",))
    module = model.layers[0].attention.wq
    assert isinstance(module, LoRALinear)
    expected = (
        module.weight.detach().clone() + (8.0 / 4) * module.lora_B.detach() @ module.lora_A.detach()
    )
    merge_lora(model)
    torch.testing.assert_close(module.weight.detach(), expected)


def test_adapters_save_and_load_alone(tmp_path, tiny_args):
    model = trained_lora_model(tiny_args)
    save_lora(model, tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "lora.safetensors"))
    assert set(saved) == set(lora_state_dict(model)) and all(".lora_" in k for k in saved)

    fresh = LlamaMTP(tiny_args, attention="sdpa").eval()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora_" not in k})
    load_lora(fresh, tmp_path)
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), model(tokens))


def test_mismatched_adapters_leave_the_model_untouched(tmp_path, tiny_args):
    save_lora(trained_lora_model(tiny_args), tmp_path)
    import dataclasses

    other = LlamaMTP(dataclasses.replace(tiny_args, ffn_dim=40), attention="sdpa")
    with pytest.raises(
        CheckpointError,
        match=r"w2\.lora_A': checkpoint has shape \(4, 96\), model expects \(4, 40\)",
    ):
        load_lora(other, tmp_path)
    assert not any(isinstance(m, LoRALinear) for m in other.modules())


def test_folded_adapters_leave_plain_linears_with_the_same_outputs(tiny_args):
    import torch.nn as nn

    model = LlamaMTP(tiny_args, attention="eager").eval()
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8.0, targets=["wq", "w2"])
    with torch.no_grad():
        for module in lora_modules(model):
            module.lora_B.normal_(0, 0.1)
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 9))
    with torch.no_grad():
        before = model(tokens)
        assert fold_lora(model) == 2 * tiny_args.n_layers
        after = model(tokens)
    assert not lora_modules(model) and not hasattr(model, "lora_config")
    assert type(model.layers[0].attention.wq) is nn.Linear
    assert set(model.state_dict()) == base_keys
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["q-k-v-alike", "grouped-query"])
def test_adapters_and_their_gradients_match_a_plain_reference(tiny_args, kv_heads):
    """The model with adapters on all seven projections against the plain Meta reference run on
    ``W + scale B A``, a formula that shares no code with wmtp: the same logits, and the same
    gradients of every A and B (k and v as wide as q, and narrower)."""
    import dataclasses

    from tests.models.reference import reference_mtp_logits
    from tests.models.test_llama_mtp import meta_params

    args = dataclasses.replace(tiny_args, n_kv_heads=kv_heads)
    model = LlamaMTP(args, attention="sdpa")
    apply_lora(model, rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    tokens = torch.randint(0, args.vocab_size, (2, 9))
    logits = model(tokens)
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()

    sd = {k: v.detach() for k, v in model.state_dict().items() if ".lora_" not in k}
    adapters = {k: v.detach().clone().requires_grad_() for k, v in lora_state_dict(model).items()}
    for key in sd:
        prefix = key.removesuffix(".weight")
        if f"{prefix}.lora_A" in adapters:
            B, A = adapters[f"{prefix}.lora_B"], adapters[f"{prefix}.lora_A"]
            sd[key] = sd[key] + 2.0 * B @ A  # alpha / rank = 8 / 4
    expected = reference_mtp_logits(sd, meta_params(args), tokens)
    (expected * torch.linspace(-1, 1, expected.shape[-1])).sum().backward()

    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=2e-5)
    params = dict(model.named_parameters())
    assert len(adapters) == 2 * 7 * args.n_layers
    for name, reference in adapters.items():
        torch.testing.assert_close(params[name].grad, reference.grad, atol=2e-5, rtol=2e-4)
