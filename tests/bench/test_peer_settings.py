"""Each peer at its own best setting, on the same task as wmtp (CPU, tiny shapes, real
transformers and PEFT): the LoRA peers are measured without gradient checkpointing too (Hugging
Face checkpoints every layer or none; the LoRA recipe recomputes one block in 11), and a peer
trains exactly the targets wmtp's synthetic rows train."""

import warnings

import pytest
import torch

from wmtp.bench import hf_peer, peers
from wmtp.bench.step import SyntheticBatches
from wmtp.data.examples import IGNORE_INDEX

SEQ = 64
CPU = ("parallel.device='cpu'", f"data.max_length={SEQ}", "model.policy.flavour='tiny'")
TINY = {
    "lora7b": CPU,
    "full1b": (*CPU, "parallel.compile=false", "model.policy.vocab_size=512"),
}
CPU_DEVICE = torch.device("cpu")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # transformers' deprecation notices about its own names
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _recipe(shape: str, micro_batch: int = 2):
    return peers.shape_recipe(shape, heads=1, micro_batch=micro_batch, overrides=TINY[shape])


def test_every_lora_peer_is_measured_with_and_without_gradient_checkpointing():
    recipe = _recipe("lora7b")
    assert recipe.parallel.activation_checkpointing == 11  # one block in 11: no HF setting
    lora_peers = [s for s in peers.SIDES["lora7b"] if not s.startswith("wmtp-")]
    checkpointed = [s for s in lora_peers if "no-checkpointing" not in peers.settings(s)]
    for side in checkpointed:
        without = f"{side}+no-checkpointing"
        assert without in lora_peers, side
        on, off = (peers.peer_config("lora7b", s, recipe) for s in (side, without))
        assert on.gradient_checkpointing is True and off.gradient_checkpointing is False, side
        assert (on.compile, on.liger) == (off.compile, off.liger), side
    liger_last = peers.ordered(["hf-peft+liger+no-checkpointing", "hf-peft+no-checkpointing"])
    assert liger_last == ["hf-peft+no-checkpointing", "hf-peft+liger+no-checkpointing"]


def test_a_peer_without_gradient_checkpointing_recomputes_nothing():
    recipe = _recipe("lora7b")
    args = peers.peer_args(recipe)
    forwards = []
    for side in ("hf-peft", "hf-peft+no-checkpointing"):
        peer = hf_peer.build_peer(args, peers.peer_config("lora7b", side, recipe), CPU_DEVICE)
        layer = peer.model.base_model.model.model.layers[0]
        calls = []
        # a pre-hook: the recomputation stops once it has what the backward needs (torch's
        # early stop), inside the MLP, so a hook after the MLP's forward would not see it
        layer.mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        peer.step(*hf_peer.synthetic_batch(args.vocab_size, 1, SEQ, CPU_DEVICE))
        forwards.append(len(calls))
    assert forwards == [2, 1]  # checkpointed: its forward again in the backward


@pytest.mark.parametrize("shape", ["full1b", "lora7b"])
def test_a_peer_trains_the_targets_wmtps_synthetic_rows_train(shape):
    """Both sides read the same row and train the same next-token targets: the masked prompt
    is no target on either side (Hugging Face shifts ``labels`` itself, as wmtp's head 1)."""
    recipe = _recipe(shape)
    args = peers.peer_args(recipe)
    peer = hf_peer.build_peer(
        args, peers.peer_config(shape, "hf-peft" if shape == "lora7b" else "hf", recipe), CPU_DEVICE
    )
    seen = []
    peer.model.register_forward_pre_hook(
        lambda module, a, kw: seen.append(kw["labels"]), with_kwargs=True
    )
    hf_peer.measure(peer, args, micro_batch=2, seq_len=SEQ, warmup=0, repeats=1, device=CPU_DEVICE)
    (wmtp_batch,) = SyntheticBatches(
        recipe, vocab_size=args.vocab_size, n_heads=1, rank=0
    ).next_step()
    peer_targets_BT = seen[0][:, 1:] != IGNORE_INDEX
    wmtp_targets_BT = wmtp_batch["labels"][:, 1:] != IGNORE_INDEX
    assert peer_targets_BT.shape == wmtp_targets_BT.shape
    assert torch.equal(peer_targets_BT, wmtp_targets_BT)
    assert not peer_targets_BT.all()  # the prompt is masked


def test_the_float8_lora_peer_runs_its_frozen_base_linears_in_float8():
    """hf-peft+...+float8: torchao's float8 on PEFT's frozen base linears only (adapters and the
    unembedding stay bf16, as wmtp keeps them), and its step trains the adapters alone; a full
    fine-tuning peer with float8 converts every decoder linear. On the CPU, where torch runs
    float8 products for real; the side itself is refused off a float8 GPU."""
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    recipe = _recipe("lora7b")
    args = peers.peer_args(recipe)
    side = "hf-peft+compile+no-checkpointing+float8"
    config = peers.peer_config("lora7b", side, recipe)
    assert config.float8 and config.compile and not config.gradient_checkpointing
    eager = type(config)("hf-peft+float8", lora=config.lora, float8=True)
    assert "needs a CUDA GPU" in hf_peer.unavailable(eager, CPU_DEVICE)
    peer = hf_peer.build_peer(args, eager, CPU_DEVICE)
    converted = [n for n, m in peer.model.named_modules() if isinstance(m, Float8Linear)]
    targets = len(recipe.model.policy.lora.targets) * args.n_layers  # one base per target
    assert len(converted) == targets and all(n.endswith("base_layer") for n in converted)
    before = {n: p.detach().clone() for n, p in peer.model.named_parameters()}
    peer.step(*hf_peer.synthetic_batch(args.vocab_size, 2, SEQ, CPU_DEVICE))
    changed = {n for n, p in peer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed)

    full = hf_peer.build_peer(args, type(config)("hf+float8", float8=True), CPU_DEVICE)
    converted = [n for n, m in full.model.named_modules() if isinstance(m, Float8Linear)]
    assert len(converted) == 7 * args.n_layers and not any("lm_head" in n for n in converted)
