"""wmtp's LoRA against the reference, Hugging Face PEFT, on the policy ``wmtp run`` builds.

The policy is built as ``wmtp run`` builds it: a recipe file (``recipes/tiny.toml`` extended with
``[model.policy] path`` and ``lora``) read by ``load_recipe``, then ``assembly.model(...,
trainable=True)`` through the registry's ``llama_mtp`` builder, which applies the adapters. Its
base is a tiny ``LlamaForCausalLM`` saved in Hugging Face format; PEFT wraps that same model with
``LoraConfig(r, lora_alpha, lora_dropout, target_modules=q/k/v/o/gate/up/down_proj)``.

Both sides get the same adapter values. One layout difference is not a difference of meaning:
wmtp keeps Meta's row order of ``wq``/``wk`` (RoPE on consecutive pairs), so the rows of their
``B`` (an output-side factor) are Hugging Face's rows unpermuted, as the base weights are
(``hf_convert.unpermute_qk``); ``A`` (input side) is the same tensor.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.models.builders import tiny_hf_llama
from wmtp import assembly
from wmtp.errors import RecipeError
from wmtp.models.hf_convert import unpermute_qk
from wmtp.models.lora import LoRALinear, fold_lora, lora_modules
from wmtp.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.toml"
PEFT_TARGETS = {  # wmtp's LoRA target -> Hugging Face's module name (PEFT's target_modules)
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
}
HF_PARENTS = {"attention": "self_attn", "feed_forward": "mlp"}
HF_LAYERS = 3  # trunk of 2 and head 1's layer


@functools.cache
def production_lora() -> dict:
    """The ``lora`` table of ``recipes/base.toml`` (every production recipe extends it)."""
    return load_recipe(REPO / "recipes" / "base.toml").recipe.model.policy.lora.model_dump()


@functools.cache
def tokenizer():
    return assembly.tokenizer(load_recipe(TINY).recipe)


@dataclasses.dataclass
class Pair:
    """wmtp's policy as training builds it and PEFT over the same base."""

    wmtp: torch.nn.Module
    peft: torch.nn.Module
    base_dir: Path


def toml_table(values: dict) -> str:
    def value(v):
        return repr(v).replace("'", '"') if not isinstance(v, bool) else str(v).lower()

    return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in values.items()) + " }"


def training_policy(tmp_path: Path, lora: dict) -> tuple[torch.nn.Module, Path]:
    """The tiny recipe over a Hugging Face base with ``lora``, built as ``wmtp run`` builds its
    policy (``Trainer.build``: ``assembly.model(recipe, pipeline.trains, trainable=True)``)."""
    base_dir = tmp_path / "base"
    tiny_hf_llama(vocab_size=tokenizer().vocab_size, num_hidden_layers=HF_LAYERS).save_pretrained(
        base_dir
    )
    recipe_file = tmp_path / "lora.toml"
    recipe_file.write_text(
        f'extends = "{TINY.as_posix()}"\n\n[model.policy]\npath = "{base_dir.as_posix()}"\n'
        f'flavour = ""\nlora = {toml_table(lora)}\n'
    )
    recipe = load_recipe(recipe_file).recipe
    info = recipe.pipeline
    model = assembly.model(
        recipe,
        info.trains,
        tokenizer=tokenizer(),
        device="cpu",
        trainable=True,
        n_future_tokens=info.heads,
    )
    return model, base_dir


def peft_over(base_dir: Path, lora: dict) -> torch.nn.Module:
    import transformers
    from peft import LoraConfig, get_peft_model

    hf = transformers.LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=[PEFT_TARGETS[t] for t in lora["targets"]],
    )
    return get_peft_model(hf, config).train()


def make_pair(tmp_path: Path, **lora) -> Pair:
    lora = {"rank": 4, "alpha": 12.0, "dropout": 0.0, "targets": list(PEFT_TARGETS)} | lora
    model, base_dir = training_policy(tmp_path, lora)
    return Pair(model, peft_over(base_dir, lora), base_dir)


def adapted_pairs(pair: Pair) -> list[tuple[str, LoRALinear, torch.nn.Module]]:
    """(wmtp name, wmtp's adapted Linear, PEFT's) for every adapter of the trunk and head 1 (the
    layers a Hugging Face Llama has); the two sets of adapted modules must be the same."""
    peft_modules = {
        n: m for n, m in pair.peft.named_modules() if hasattr(m, "lora_A") and hasattr(m, "scaling")
    }
    ours = {
        n: m
        for n, m in pair.wmtp.named_modules()
        if isinstance(m, LoRALinear) and n.startswith("layers.")
    }
    assert {peft_name(n) for n in ours} == set(peft_modules), "not the same modules adapted"
    return [(n, m, peft_modules[peft_name(n)]) for n, m in ours.items()]


def peft_name(wmtp_name: str) -> str:
    """``layers.1.attention.wq`` -> ``base_model.model.model.layers.1.self_attn.q_proj``."""
    _, index, part, leaf = wmtp_name.split(".")
    return f"base_model.model.model.layers.{index}.{HF_PARENTS[part]}.{PEFT_TARGETS[leaf]}"


def meta_rows(name: str, hf_rows: torch.Tensor, model) -> torch.Tensor:
    """An output-side tensor of a Hugging Face projection in wmtp's (Meta's) row order."""
    if name.endswith(".wq"):
        return unpermute_qk(hf_rows, model.args.n_heads)
    if name.endswith(".wk"):
        return unpermute_qk(hf_rows, model.args.n_kv_heads)
    return hf_rows


@torch.no_grad()
def give_both_the_same_adapters(pair: Pair) -> None:
    """Random A and (nonzero) B, the same values on both sides."""
    for name, ours, theirs in adapted_pairs(pair):
        a = torch.randn_like(ours.lora_A) * 0.3
        b = torch.randn(ours.lora_B.shape) * 0.3
        theirs.lora_A["default"].weight.copy_(a)
        theirs.lora_B["default"].weight.copy_(b)
        ours.lora_A.copy_(a)
        ours.lora_B.copy_(meta_rows(name, b, pair.wmtp))


def evaluating(pair: Pair) -> None:
    """Both sides in eval mode (no dropout)."""
    pair.wmtp.eval()
    pair.peft.eval()


def tokens(batch: int = 2, length: int = 11) -> torch.Tensor:
    return torch.randint(0, tokenizer().vocab_size, (batch, length))


def head1(model, ids) -> torch.Tensor:
    return model(ids)[:, :, 0]


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def hf_base_logits(base_dir: Path, ids) -> torch.Tensor:
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


# (1) logits, (4) scaling ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lora",
    [{"rank": 4, "alpha": 12.0}, {"rank": 8, "alpha": 4.0}, "production"],
    ids=["r4-alpha12", "r8-alpha4", "recipes-base-r64-alpha128-dropout0.05"],
)
def test_next_token_logits_equal_peft(tmp_path, lora):
    """With the same (nonzero) adapters, head 1 of the policy training builds gives PEFT's
    logits, at several ratios alpha / r and at the production settings (r 64, alpha 128,
    dropout 0.05, all seven projections) read from ``recipes/base.toml``; in eval mode neither
    drops anything (two passes agree). The adapters change the logits, so they are compared."""
    pair = make_pair(tmp_path, **(production_lora() if lora == "production" else lora))
    give_both_the_same_adapters(pair)
    evaluating(pair)
    ids = tokens()
    with torch.no_grad():
        ours, theirs = head1(pair.wmtp, ids), pair.peft(ids).logits
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(head1(pair.wmtp, ids), ours, atol=0, rtol=0)
    assert (ours - hf_base_logits(pair.base_dir, ids)).abs().max() > 1e-2


@pytest.mark.parametrize("rank, alpha", [(4, 12.0), (64, 128.0), (16, 4.0)])
def test_scale_is_alpha_over_rank_as_in_peft(tmp_path, rank, alpha):
    """Every adapter's scale is alpha / r, PEFT's ``scaling`` without ``use_rslora``, on every
    target; the adapter's term is exactly ``scale * B A x``."""
    pair = make_pair(tmp_path, rank=rank, alpha=alpha)
    give_both_the_same_adapters(pair)
    for _, ours, theirs in adapted_pairs(pair):
        assert ours.scale == alpha / rank == theirs.scaling["default"]
    module = pair.wmtp.layers[0].attention.wv
    x = torch.randn(3, module.in_features)
    with torch.no_grad():
        term = module(x) - F.linear(x, module.weight)
        expected = (alpha / rank) * x @ module.lora_A.T @ module.lora_B.T
    torch.testing.assert_close(term, expected, atol=1e-5, rtol=1e-5)


def test_recipe_offers_no_peft_option_it_would_ignore(tmp_path):
    """wmtp has no rsLoRA (PEFT's ``use_rslora``: alpha / sqrt(r)), DoRA or other variant: the
    recipe refuses such a key rather than training plain LoRA under its name."""
    recipe_file = tmp_path / "rslora.toml"
    for key in ("use_rslora", "use_dora", "lora_alpha"):
        recipe_file.write_text(
            f'extends = "{TINY.as_posix()}"\n[model.policy]\n'
            f"lora = {{ rank = 4, alpha = 8.0, {key} = true }}\n"
        )
        with pytest.raises(RecipeError, match=rf"model\.policy\.lora\.{key}: unknown key"):
            load_recipe(recipe_file)


# (2) gradients, (3) frozen base ---------------------------------------------------------------


def test_adapter_gradients_equal_peft_and_the_base_gets_none(tmp_path):
    """After one backward of the same next-token loss, every A and B of the seven targets has
    PEFT's gradient; no base parameter (embedding, norms, projections, unembedding) asks for or
    gets a gradient, on either side; what trains is exactly the adapters."""
    pair = make_pair(tmp_path)
    give_both_the_same_adapters(pair)
    ids = tokens()
    next_token_loss(head1(pair.wmtp, ids), ids).backward()
    next_token_loss(pair.peft(ids).logits, ids).backward()
    for name, ours, theirs in adapted_pairs(pair):
        assert_same_adapter_grads(name, ours, theirs, pair.wmtp)
    for side in (pair.wmtp, pair.peft):
        base = [p for n, p in side.named_parameters() if ".lora_" not in n]
        assert base and not any(p.requires_grad or p.grad is not None for p in base)
    trainable = {n for n, p in pair.wmtp.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n, _ in _all_adapters(pair.wmtp) for ab in "AB"}


def _all_adapters(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def assert_same_adapter_grads(name: str, ours: LoRALinear, theirs, model) -> None:
    """wmtp's A and B gradients are PEFT's (B's rows in wmtp's order), to fp32 rounding relative
    to the gradient's size (the two models sum attention and GQA in different orders)."""
    grad_a = theirs.lora_A["default"].weight.grad
    grad_b = meta_rows(name, theirs.lora_B["default"].weight.grad, model)
    for got, want in ((ours.lora_A.grad, grad_a), (ours.lora_B.grad, grad_b)):
        assert want.abs().max() > 0, f"{name}: no gradient to compare"
        torch.testing.assert_close(
            got, want, atol=1e-4 * want.abs().max(), rtol=1e-4, msg=lambda m: f"{name}: {m}"
        )


# (5) initialisation ------------------------------------------------------------------------------


def test_fresh_adapters_leave_the_base_as_peft_does(tmp_path):
    """As PEFT's default (``init_lora_weights=True``), a fresh B is zero: the policy training
    starts from computes its base's logits exactly, even in train mode with dropout (dropout
    never touches the base path)."""
    pair = make_pair(tmp_path, **production_lora())
    for _, ours, theirs in adapted_pairs(pair):
        assert not ours.lora_B.any() and not theirs.lora_B["default"].weight.any()
    assert pair.wmtp.training
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(
            head1(pair.wmtp, ids), hf_base_logits(pair.base_dir, ids), atol=2e-5, rtol=1e-5
        )


def test_fresh_A_is_drawn_as_peft_draws_it(tmp_path):
    """``lora.py`` draws A with ``kaiming_uniform_(a=sqrt(5))``, as PEFT's default does: uniform
    on [-1/sqrt(in), 1/sqrt(in)]. Scaled by sqrt(in), both sides' A (r 64, every target) lie in
    [-1, 1] with the uniform's mean 0 and variance 1/3, and their distributions agree (a
    two-sample Kolmogorov-Smirnov distance far below what a different family gives)."""
    pair = make_pair(tmp_path, rank=64, alpha=128.0)
    ours, theirs = [], []
    for _, mine, peft_module in adapted_pairs(pair):
        ours.append(mine.lora_A.detach().flatten() * mine.in_features**0.5)
        theirs.append(
            peft_module.lora_A["default"].weight.detach().flatten() * mine.in_features**0.5
        )
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    for sample in (ours, theirs):
        assert sample.abs().max() <= 1.0
        assert abs(sample.mean()) < 0.02 and abs(sample.var() - 1 / 3) < 0.01
    assert ks_distance(ours, theirs) < 0.02
    assert ks_distance(ours, torch.randn_like(ours) / 3**0.5) > 0.05  # the test can tell


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest gap between the two empirical CDFs."""
    points = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, points, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, points, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


# (6) merged weights ----------------------------------------------------------------------------


def test_exported_merged_weights_equal_merge_and_unload(tmp_path):
    """What ``wmtp export --to hf`` writes for a LoRA policy (``ExportRun.adapt``: ``fold_lora``,
    then ``write_hf_model``) holds, tensor for tensor, the weights of PEFT's
    ``merge_and_unload()``, and no adapter is left."""
    from safetensors.torch import load_file

    from wmtp.export.hf import write_hf_model

    pair = make_pair(tmp_path, **production_lora())
    give_both_the_same_adapters(pair)
    evaluating(pair)
    assert fold_lora(pair.wmtp) > 0 and not lora_modules(pair.wmtp)
    pair.wmtp.set_heads(1)  # --heads 1: the plain LlamaForCausalLM alone
    out = tmp_path / "export"
    out.mkdir()
    write_hf_model(pair.wmtp, out, dtype=torch.float32, token_ids={}, progress=False)
    exported = load_file(str(out / "model.safetensors"))
    merged = pair.peft.merge_and_unload().state_dict()
    assert set(exported) == set(merged) - {"model.rotary_emb.inv_freq"}
    for name, tensor in exported.items():
        torch.testing.assert_close(
            tensor, merged[name], atol=1e-6, rtol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


# (7) dropout -----------------------------------------------------------------------------------


def test_train_mode_dropout_is_pefts_under_the_same_random_draws(tmp_path):
    """In train mode with dropout p, both sides compute ``W x + scale * B A dropout(x)``: fed the
    same random stream, they draw the same masks (the same shapes in the same order) and give the
    same logits and adapter gradients; the masks do change the logits, and in eval mode there is
    no dropout at all."""
    pair = make_pair(tmp_path, rank=4, alpha=12.0, dropout=0.5)
    give_both_the_same_adapters(pair)
    ids = tokens()
    torch.manual_seed(7)
    ours = head1(pair.wmtp, ids)
    torch.manual_seed(7)
    theirs = pair.peft(ids).logits
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    next_token_loss(ours, ids).backward()
    next_token_loss(theirs, ids).backward()
    for name, ours_module, peft_module in adapted_pairs(pair):
        assert_same_adapter_grads(name, ours_module, peft_module, pair.wmtp)
    evaluating(pair)
    with torch.no_grad():
        evaluated = head1(pair.wmtp, ids)
        torch.testing.assert_close(evaluated, pair.peft(ids).logits, atol=2e-5, rtol=1e-5)
    assert (evaluated - ours.detach()).abs().max() > 1e-2  # train mode did drop


def test_dropout_reaches_the_adapter_input_alone(tmp_path):
    """One adapted projection in train mode: its output minus the frozen ``W x`` is exactly
    ``scale * B A dropout(x)`` for the mask PEFT's ``nn.Dropout(p)`` draws from the same seed,
    so ``W x`` itself is never dropped or rescaled."""
    pair = make_pair(tmp_path, rank=4, alpha=12.0, dropout=0.5)
    give_both_the_same_adapters(pair)
    module = pair.wmtp.layers[1].feed_forward.w2
    x = torch.randn(5, module.in_features)
    with torch.no_grad():
        torch.manual_seed(3)
        out = module(x)
        torch.manual_seed(3)
        dropped = torch.nn.Dropout(0.5).train()(x)
        base = F.linear(x, module.weight)
        term = 3.0 * F.linear(F.linear(dropped, module.lora_A), module.lora_B)
    torch.testing.assert_close(out, base + term, atol=1e-5, rtol=1e-5)
    assert (dropped == 0).any() and not torch.equal(dropped, x)
