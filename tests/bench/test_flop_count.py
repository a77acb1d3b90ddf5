"""The one MFU numerator (``training_flops_per_token``) against an independent count: torch's
``FlopCounterMode`` over one real optimizer step on the CPU, for every side's own step (wmtp's
trainer with one and four heads, full fine-tuning and LoRA; the Hugging Face and PEFT peers).

What the counter sees on the CPU: every matmul (``aten.mm``); sdpa's CPU kernel is not counted,
so attention is checked apart, with the peer's eager attention (``aten.bmm``). Exact relations:

- dense: the formula at ``seq_len = 0`` (no attention term), 6 FLOPs per weight per token, 4 for
  a frozen LoRA base; the counted step equals it, except that wmtp scores (unembeds) only the
  targets its synthetic rows train (the prompt's 1/8 masked) and that LoRA's adapters, which
  the formula leaves out by design, are counted by the counter;
- attention: the formula's term is half the full ``S x S`` products the counter sees (causal).
"""

import dataclasses
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wmtp.bench import hf_peer, peers
from wmtp.bench import step as step_bench
from wmtp.models.args import ModelArgs, training_flops_per_token

SEQ = 32
MICRO_BATCH = 2
CPU = ("parallel.device='cpu'", f"data.max_length={SEQ}", "model.policy.flavour='tiny'")
TINY = {
    "lora7b": (*CPU, "parallel.activation_checkpointing=false"),  # recomputation: not model work
    "full1b": (*CPU, "parallel.compile=false", "model.policy.vocab_size=512"),
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # transformers' deprecation notices about its own names
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _recipe(shape: str, heads: int):
    return peers.shape_recipe(shape, heads=heads, micro_batch=MICRO_BATCH, overrides=TINY[shape])


def _counted(step) -> tuple[dict[str, int], int]:
    """``({op: FLOPs}, tokens)`` of one call of ``step`` (after one uncounted warm-up call)."""
    step()
    with FlopCounterMode(display=False) as counter:
        tokens = step()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}, tokens


def _adapter_flops(args: ModelArgs, rank: int) -> int:
    """What LoRA's adapters compute per token on every target (wq wk wv wo w1 w2 w3): the
    forward ``x A B`` (2 r (in + out)), B's and A's input and weight gradients (4 r (in + out))."""
    kv = args.kv_heads * args.head_dim
    in_plus_out = (
        2 * args.dim + 2 * (args.dim + kv) + 2 * args.dim + 3 * (args.dim + args.hidden_dim)
    )
    return 6 * rank * in_plus_out * args.n_layers


def _first_layer_a_input_grads(args: ModelArgs, rank: int) -> int:
    """The first block's adapters on its normed input (wq wk wv w1 w3) need no input gradient
    there: nothing below them trains, so autograd skips it."""
    return 2 * rank * 5 * args.dim


def _wmtp_step_counted(recipe) -> tuple[dict[str, int], int, object]:
    """The trainer's own step (``wmtp bench step``'s, ``wmtp run``'s) on synthetic batches."""
    from wmtp.parallel import init_distributed
    from wmtp.recipe import dump_recipe
    from wmtp.train.loop import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(recipe, dump_recipe(recipe), Path(run_dir), init_distributed("cpu"))
        trainer.build(batch_source=step_bench._synthetic)
        flops = trainer.flops_per_token()
        ops, tokens = _counted(lambda: trainer.train_step(flops)["tokens"])
    return ops, tokens, trainer


@pytest.mark.parametrize(("shape", "heads"), [("full1b", 1), ("full1b", 4), ("lora7b", 4)])
def test_the_formula_counts_what_wmtps_step_multiplies(shape, heads):
    ops, tokens, trainer = _wmtp_step_counted(_recipe(shape, heads))
    args, lora = trainer.model_args, bool(trainer.lora)
    assert set(ops) == {"aten.mm"}, ops  # sdpa's CPU kernel is not counted: attention apart
    assert trainer.flops_per_token() == training_flops_per_token(args, SEQ, weight_grads=not lora)
    dense = training_flops_per_token(args, 0, weight_grads=not lora)
    # every head unembeds only the targets it trains: the synthetic prompt's positions are not
    prompt = step_bench.prompt_tokens(SEQ, heads)
    unscored = (4 if lora else 6) * heads * args.vocab_size * args.dim * prompt / SEQ
    adapters = _adapter_flops(args, trainer.recipe.model.policy.lora.rank) if lora else 0
    assert tokens == MICRO_BATCH * SEQ
    assert ops["aten.mm"] / tokens == dense - unscored + adapters


@pytest.mark.parametrize(("shape", "side"), [("full1b", "hf"), ("lora7b", "hf-peft")])
def test_the_formula_counts_what_each_peer_multiplies(shape, side):
    recipe = _recipe(shape, 1)
    args, lora = peers.peer_args(recipe), shape == "lora7b"
    config = peers.peer_config(shape, side, recipe)
    eager = dataclasses.replace(config, attn_implementation="eager", gradient_checkpointing=False)
    peer = hf_peer.build_peer(args, eager, torch.device("cpu"))
    batch = hf_peer.synthetic_batch(args.vocab_size, MICRO_BATCH, SEQ, torch.device("cpu"))
    ops, tokens = _counted(lambda: peer.step(*batch))
    assert hf_peer.flops_per_token(args, SEQ, lora=lora) == training_flops_per_token(
        args, SEQ, weight_grads=not lora
    )
    dense = training_flops_per_token(args, 0, weight_grads=not lora)
    attention = training_flops_per_token(args, SEQ, weight_grads=not lora) - dense
    adapters = 0
    if lora:
        rank = recipe.model.policy.lora.rank
        adapters = _adapter_flops(args, rank) - _first_layer_a_input_grads(args, rank)
    assert ops["aten.mm"] / tokens == dense + adapters  # the peer scores every position (its
    # prompt's too, which it does not train)
    assert ops["aten.bmm"] / tokens == 2 * attention  # full S x S products; the formula: causal
