"""Derived quantities, checked against published sizes and hand computations."""

from __future__ import annotations

import pytest

from wmtp.estimate import BYTE_TOKENIZER_VOCAB, GIB, estimate, lora_params, value_head_params
from wmtp.recipe import load_recipe

from .conftest import MINIMAL, RECIPES


def test_byte_vocab_matches_the_tokenizer():
    from wmtp.data.tokenizers import ByteTokenizer

    assert ByteTokenizer().vocab_size == BYTE_TOKENIZER_VOCAB


def test_batch_and_tokens(write):
    recipe = load_recipe(write("r.toml", MINIMAL), ["training.grad_accum_steps=3"]).recipe
    cost = estimate(recipe, world_size=4)
    assert cost.effective_batch == 4 * 3 * 4  # micro 4 (default) x accum 3 x 4 GPUs
    assert cost.tokens_per_step == 48 * 256


def test_llama2_7b_parameters_match_the_published_count():
    recipe = load_recipe(RECIPES / "baseline.toml", ["model.policy.flavour=llama2-7b"]).recipe
    recipe = recipe.model_copy(
        update={
            "model": recipe.model.model_copy(
                update={
                    "policy": recipe.model.policy.model_copy(
                        update={"lora": None, "n_future_tokens": 1}
                    )
                }
            )
        }
    )
    (policy,) = estimate(recipe).models
    assert policy.total == 6_738_415_616  # Llama-2-7B, as published with the weights


def test_lora_r64_on_every_linear_of_the_7b():
    recipe = load_recipe(RECIPES / "baseline.toml").recipe
    args = recipe.model.policy.model_args(32000)
    # per layer: attention 4 x 64 x (4096 + 4096); SwiGLU 3 x 64 x (4096 + 11008); 32 layers
    expected = 32 * (4 * 64 * 8192 + 3 * 64 * (4096 + 11008))
    assert lora_params(recipe.model.policy.lora, args) == expected == 159_907_840
    (policy,) = estimate(recipe).models
    assert policy.trainable == expected
    assert policy.total == 6_738_415_616 + expected


def test_mlp_value_head_defaults_to_quarter_and_eighth_width():
    head = load_recipe(RECIPES / "critic.toml").recipe.model.critic.head
    assert head.hidden is None
    assert head.hidden_widths(2560) == [640, 320]
    by_hand = (2560 * 640 + 640) + (640 * 320 + 320) + (320 + 1)
    assert value_head_params(head, 2560) == by_hand


@pytest.mark.parametrize("hidden", [None, [48], [40, 24, 8]])
def test_value_head_params_match_the_built_module(hidden):
    from wmtp.models.value import build_value_head
    from wmtp.recipe.schema import MLPHeadSpec

    spec = MLPHeadSpec(hidden=hidden)
    module = build_value_head(spec, 64)
    assert value_head_params(spec, 64) == sum(p.numel() for p in module.parameters())


def test_memory_of_a_fully_trained_model_by_hand(write):
    overrides = ["training.micro_batch_size=2", "parallel.sharding=no_shard"]
    recipe = load_recipe(write("r.toml", MINIMAL), overrides).recipe
    (policy,) = estimate(recipe).models
    memory = estimate(recipe, world_size=1).memory
    dim, layers, heads, kv, ffn, vocab = 64, 4, 4, 2, 192, 259
    assert policy.args.hidden_dim == ffn
    assert memory.states == 16 * policy.total  # fp32 master + grad + AdamW m, v; one shard
    assert memory.frozen == 0 and memory.gathered == 0  # no LoRA, float32 compute
    tokens = 2 * 256
    per_layer = 6 * dim + 2 * kv * (dim // heads) + 4 * ffn
    saved_layers = (layers - 2) + 1  # trunk + one head at a time (per_head)
    assert memory.activations == 4 * tokens * saved_layers * per_layer
    assert memory.logits == tokens * vocab * (4 + 4)


def test_sharding_and_checkpointing_shrink_memory():
    """Against the verifiable recipe with every block checkpointed at micro-batch 4 (its earlier
    setting): sharding divides states and frozen weights, checkpointing fewer blocks keeps more
    activations, and the recipe as written (one sequence, one block in 11) sits between."""

    def verifiable(*sets: str):
        every_block = ("parallel.activation_checkpointing=true", "training.micro_batch_size=4")
        return load_recipe(RECIPES / "verifiable.toml", [*every_block, *sets]).recipe

    recipe = verifiable("training.grad_accum_steps=1")
    one, eight = estimate(recipe, 1).memory, estimate(recipe, 8).memory
    assert eight.states == pytest.approx(one.states / 8)
    # Accumulating micro-batches, FSDP2 holds unsharded fp32 gradients instead of sharded ones.
    accum = verifiable("training.grad_accum_steps=2")
    trained = next(m for m in estimate(accum, 8).models if m.role == "policy").trainable
    assert estimate(accum, 8).memory.states == pytest.approx(eight.states + 4 * trained * 7 / 8)
    assert estimate(accum, 1).memory.states == one.states  # one process: plain .grad
    assert eight.frozen_models == pytest.approx(one.frozen_models / 8)
    no_ac = verifiable("parallel.activation_checkpointing=false")
    assert estimate(no_ac, 8).memory.activations > 5 * eight.activations
    every_2 = verifiable("parallel.activation_checkpointing=2")
    assert (
        eight.activations
        < estimate(every_2, 8).memory.activations
        < estimate(no_ac, 8).memory.activations
    )
    assert 1 < eight.total / GIB < 80  # fits an 80 GB GPU at 8-way sharding
    as_written = load_recipe(RECIPES / "verifiable.toml").recipe
    assert as_written.parallel.activation_checkpointing == 11
    assert as_written.training.micro_batch_size * as_written.training.grad_accum_steps == 32
    written = estimate(as_written, 1).memory
    assert written.activations < estimate(no_ac, 1).memory.activations / 4  # one row, not four
    assert written.total / GIB < 32  # the recipe's comment: under ~32 GB, checkpoint every block


def test_sizes_from_a_checkpoint_are_not_guessed(write):
    recipe = load_recipe(
        write("r.toml", MINIMAL.replace('flavour = "tiny"', 'path = "ckpt"'))
    ).recipe
    cost = estimate(recipe)
    assert cost.memory is None and cost.models[0].args is None
    assert any("checkpoint" in note for note in cost.notes)


def test_joint_mtp_loss_counts_every_heads_logits(write):
    """``joint`` keeps each head's fp32 log-probabilities for its one backward (by hand)."""
    base = ["training.micro_batch_size=2", "parallel.sharding=no_shard"]
    per_head = load_recipe(write("r.toml", MINIMAL), base).recipe
    joint = load_recipe(write("j.toml", MINIMAL), [*base, "training.mtp_loss=joint"]).recipe
    chunked = load_recipe(write("c.toml", MINIMAL), [*base, "training.mtp_loss=chunked"]).recipe
    (policy,) = estimate(joint).models
    n, tokens, vocab = policy.args.n_future_tokens, 2 * 256, 259
    assert estimate(chunked).memory.logits == 0
    assert estimate(per_head).memory.logits == tokens * vocab * (4 + 4)
    assert estimate(joint).memory.logits == n * tokens * vocab * 4 + tokens * vocab * (4 + 4)
    assert any("joint" in note for note in estimate(joint).notes)
    assert not any("joint" in note for note in estimate(per_head).notes)


def test_per_head_under_fsdp_keeps_every_head_layer(write):
    """On one GPU per_head holds the trunk plus one head layer; under FSDP (one backward) all of
    them, like chunked, while the per-token activations of a layer stay the same (by hand)."""
    base = ["training.micro_batch_size=1", "parallel.activation_checkpointing=false"]
    per_head = load_recipe(write("r.toml", MINIMAL), base).recipe
    one, two = estimate(per_head, 1).memory, estimate(per_head, 2).memory
    (policy,) = estimate(per_head).models
    args = policy.args
    assert args.n_future_tokens > 1
    ratio = args.n_layers / (args.n_trunk_layers + 1)
    assert two.activations == pytest.approx(one.activations * ratio)


def test_lora_dropout_masks_by_hand():
    """Each adapter keeps its dropout mask, a byte per input element: at Llama-2-7B with the
    production targets, 5 linears read dim, wo reads n_heads * head_dim, w2 the FFN width."""
    from wmtp.estimate import lora_mask_bytes

    recipe = load_recipe(RECIPES / "baseline.toml").recipe
    lora = recipe.model.policy.lora
    args = estimate(recipe).models[0].args
    assert lora_mask_bytes(lora, args) == 6 * 4096 + 11008
    assert lora_mask_bytes(lora.model_copy(update={"dropout": 0.0}), args) == 0


MEASURED_STEPS = RECIPES.parent / "bench/results/h200_step_20261204"
"""`wmtp bench step` results of the production LoRA recipes on one H200 (committed), each with
its settings: micro-batch, accumulation, checkpointing."""


@pytest.mark.parametrize(
    "measured",
    sorted(MEASURED_STEPS.glob("memory_budget/*/*.json"))
    + sorted(MEASURED_STEPS.glob("verifiable_step*/*/*.json")),
    ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}",
)
def test_the_memory_estimate_is_within_5_percent_of_each_measured_peak(measured):
    """`wmtp validate`'s memory per GPU against the peak `wmtp bench step` measured on an H200
    with the same recipe and settings (the recipes as written and variants of micro-batch,
    accumulation and checkpointing): from 2% under to 5% over."""
    import json

    result = json.loads(measured.read_text())
    config = result["config"]
    checkpointing = str(config["activation_checkpointing"]).lower()
    sets = [
        "model.policy.path=''",
        "tokenizer={kind='byte'}",
        f"training.micro_batch_size={config['micro_batch_size']}",
        f"training.grad_accum_steps={config['grad_accum_steps']}",
        f"parallel.activation_checkpointing={checkpointing}",
    ]
    if config["pipeline"] == "verifiable":
        sets += ["model.critic.path=''", "model.critic.checkpoint=''"]
    recipe = load_recipe(RECIPES / f"{config['pipeline']}.toml", sets).recipe
    ratio = estimate(recipe).memory.total / GIB / result["peak_memory_gib"]
    assert 0.98 <= ratio <= 1.05, ratio
