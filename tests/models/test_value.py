"""Value model: heads, per-token values, backbones from every checkpoint format."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.models.builders import PARAMS, VOCAB, meta_state_dict, tiny_hf_llama
from wmtp.errors import CheckpointError
from wmtp.models.checkpoint import save_wmtp
from wmtp.models.llama_mtp import LlamaMTP
from wmtp.models.value import ValueModel, build_value_head


def test_heads_give_per_token_values(tiny_args):
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 7))
    for kind in ("linear", "sigmoid", "mlp"):
        model = ValueModel(tiny_args, head=kind, attention="sdpa")
        values = model(tokens)
        assert values.shape == (2, 7) and values.dtype == torch.float32
        if kind == "sigmoid":
            assert bool(((values > 0) & (values < 1)).all())
            torch.testing.assert_close(values, torch.sigmoid(model.scores(tokens)))


def test_mlp_head_default_widths_and_explicit_ones():
    default = build_value_head("mlp", 64)  # the registry's builder, as the critic's head
    widths = [m.out_features for m in default.mlp if isinstance(m, torch.nn.Linear)]
    assert widths == [16, 8, 1]
    explicit = build_value_head({"kind": "mlp", "hidden": [10], "activation": "relu"}, 64)
    assert [m.out_features for m in explicit.mlp if isinstance(m, torch.nn.Linear)] == [10, 1]
    assert isinstance(explicit.mlp[1], torch.nn.ReLU)


def test_a_value_head_the_schema_refuses_is_a_component_error():
    from wmtp.errors import ComponentError

    with pytest.raises(ComponentError, match="value head"):
        build_value_head({"kind": "mlp", "hidden": [0]}, 64)
    with pytest.raises(ComponentError, match="value head"):
        build_value_head("cubic", 64)


def test_values_equal_head_on_the_backbone_hidden_state(tiny_args):
    model = ValueModel(tiny_args, head="linear", attention="eager")
    policy = LlamaMTP(dataclasses.replace(tiny_args, n_future_tokens=1), attention="eager")
    policy.load_state_dict(
        {
            k[len("backbone.") :]: v
            for k, v in model.state_dict().items()
            if k.startswith("backbone.")
        },
        strict=False,
    )
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 5))
    hidden = policy.head_hidden(policy.trunk(tokens), 1)
    expected = hidden @ model.head.proj.weight[0] + model.head.proj.bias[0]
    torch.testing.assert_close(model(tokens), expected)


def _backbone_matches(value_model, sd_prefix_free, tokens, n_layers_total, n_future):
    """The value model's hidden state equals trunk + head 1 of the source weights."""
    params = dict(PARAMS, n_layers=n_layers_total, n_future_tokens=n_future)
    from tests.models.reference import reference_mtp_logits

    ref_sd = dict(sd_prefix_free)
    ref_sd["output.weight"] = torch.eye(ref_sd["norm.weight"].shape[0])  # logits = hidden
    expected_hidden = reference_mtp_logits(ref_sd, params, tokens)[:, :, 0]
    with torch.no_grad():
        torch.testing.assert_close(
            value_model.hidden(tokens), expected_hidden, atol=1e-4, rtol=1e-4
        )


def test_backbone_from_meta_mtp_checkpoint(tmp_path):
    sd = meta_state_dict(PARAMS, VOCAB)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    torch.save(sd, tmp_path / "consolidated.pth")
    model = ValueModel.from_pretrained(tmp_path, head="mlp", dtype="float32", attention="eager")
    assert model.args.n_future_tokens == 1 and model.args.n_layers == PARAMS["n_layers"] - 2
    tokens = torch.randint(0, VOCAB, (2, 6))
    _backbone_matches(model, sd, tokens, PARAMS["n_layers"], PARAMS["n_future_tokens"])
    assert torch.isfinite(model(tokens)).all()


def test_backbone_from_hf_checkpoint(tmp_path):
    hf = tiny_hf_llama(rope_theta=10000.0)
    hf.save_pretrained(tmp_path)
    model = ValueModel.from_pretrained(tmp_path, head="linear", dtype="float32", attention="sdpa")
    tokens = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        expected = hf.model(tokens).last_hidden_state
        torch.testing.assert_close(model.hidden(tokens), expected, atol=1e-4, rtol=1e-4)


def test_backbone_from_wmtp_policy_and_value_round_trip(tmp_path, tiny_args):
    policy = LlamaMTP(tiny_args, attention="sdpa")
    save_wmtp(policy, tmp_path / "policy")
    value = ValueModel.from_pretrained(
        tmp_path / "policy", head={"kind": "mlp", "hidden": [8]}, dtype="float32"
    )
    tokens = torch.randint(0, tiny_args.vocab_size, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(
            value.hidden(tokens), policy.head_hidden(policy.trunk(tokens), 1)
        )
    value.save(tmp_path / "critic")
    again = ValueModel.from_pretrained(tmp_path / "critic", dtype="float32", attention="eager")
    assert again.head_config == {"kind": "mlp", "hidden": [8]}
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), value(tokens), atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="value head"):
        ValueModel.from_pretrained(tmp_path / "critic", head="linear", dtype="float32")


def test_bfloat16_value_model(tiny_args, tmp_path):
    save_wmtp(LlamaMTP(tiny_args, attention="sdpa"), tmp_path)
    model = ValueModel.from_pretrained(tmp_path, head="sigmoid", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    values = model(torch.randint(0, tiny_args.vocab_size, (2, 5)))
    assert values.dtype == torch.float32 and torch.isfinite(values).all()


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "bf16-autocast"])
def test_a_bfloat16_critics_scores_are_its_head_in_fp32(tiny_args, kind, autocast):
    """TD errors are differences of neighbouring values: the head's last ``dim -> 1`` product is
    computed and returned in fp32 (a bf16 output rounds a score near 0.5 to steps of 0.002), with
    bf16 weights (FSDP's compute dtype) and under bf16 autocast (one process without FSDP)."""
    torch.manual_seed(0)
    model = ValueModel(tiny_args, head=kind, attention="sdpa")
    last = model.head.proj if kind == "linear" else model.head.mlp[-1]
    with torch.no_grad():
        last.bias.fill_(0.5)  # scores near 0.5, where bf16's steps are 2^-8 wide
    if not autocast:
        model = model.to(torch.bfloat16)
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.no_grad():
        scores = model.scores(tokens)
        h = model.hidden(tokens)
        into_last = h if kind == "linear" else model.head.mlp[:-1](h)
    reference = into_last.double() @ last.weight.double().T + last.bias.double()
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), reference.squeeze(-1), rtol=0, atol=1e-6)


def test_an_hf_backbone_that_does_not_fit_is_said_in_hugging_face_names(tmp_path):
    """A critic's Hugging Face directory whose config.json says another width than its weights:
    each key named as the directory names it, wmtp's beside it, as the policy's are."""
    tiny_hf_llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 64}))
    with pytest.raises(CheckpointError) as err:
        ValueModel.from_pretrained(tmp_path, head="mlp", dtype="float32", attention="sdpa")
    said = str(err.value)
    assert (
        "'model.layers.0.mlp.gate_proj.weight' (wmtp 'backbone.layers.0.feed_forward.w1.weight')"
        in said
    ), said
    assert "checkpoint has shape (48, 32), model expects (64, 32)" in said, said
