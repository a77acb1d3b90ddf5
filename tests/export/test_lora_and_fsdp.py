"""A LoRA run and a 2-rank FSDP2 run (gloo), each exported to Hugging Face and Meta: merged LoRA
equals the unmerged model, and the sharded DCP state alone consolidates on one CPU process."""

from __future__ import annotations

import shutil

import torch

from tests.export.export_helpers import TOKENS, export, logits, wmtp_model


def test_merged_lora_equals_the_unmerged_model(lora_run, lora_base, tmp_path):
    from wmtp.models.checkpoint import from_pretrained
    from wmtp.models.lora import lora_modules

    unmerged = wmtp_model(lora_run, fold_adapters=False)
    assert lora_modules(unmerged)  # the adapters apart, as training runs them
    want = logits(unmerged)
    base = logits(from_pretrained(lora_base, dtype="float32", attention="sdpa"))
    assert (want - base).abs().max() > 1e-3  # the adapters trained: merging has work to do
    for to in ("hf", "meta"):
        out = tmp_path / to
        result = export(lora_run, "--to", to, "--out", out)
        assert result.exit_code == 0, result.output
        merged = wmtp_model(out)
        assert not lora_modules(merged)
        largest = (logits(merged) - want).abs().max().item()
        print(f"--to {to}: largest |merged - unmerged LoRA| logit difference: {largest:.3g}")
        torch.testing.assert_close(logits(merged), want, rtol=1e-5, atol=1e-5)
        assert "LoRA adapters: merged into the weights" in (out / "README.md").read_text()


def test_lora_kept_apart_is_a_checkpoint_over_the_base(lora_run, tmp_path):
    out = tmp_path / "adapters"
    result = export(lora_run, "--to", "wmtp", "--no-merge-lora", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "lora.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert torch.equal(logits(wmtp_model(out)), logits(wmtp_model(lora_run)))
    result = export(lora_run, "--to", "hf", "--no-merge-lora", "--out", tmp_path / "no")
    assert result.exit_code == 2 and "--merge-lora" in result.flat
    assert not (tmp_path / "no").exists()


def test_lora_kept_apart_names_its_base_and_a_missing_base_is_located(lora_base, tmp_path):
    """The card lists the files the folder holds and names the base model it needs; the export
    exports again; with the base gone, eval and export say where the recipe names it."""
    from typer.testing import CliRunner

    from tests.export.export_helpers import train
    from tests.train.train_helpers import TINY
    from wmtp.cli import app

    base = tmp_path / "models" / "base"
    shutil.copytree(lora_base, base)
    lora = "model.policy.lora={rank = 4, alpha = 16.0}"
    run = train(tmp_path / "lora", TINY, f"model.policy.path='{base}'", lora)
    out = tmp_path / "adapters"
    result = export(run, "--to", "wmtp", "--no-merge-lora", "--out", out)
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "model.safetensors" not in card and "wmtp_model.json" not in card
    assert f"over the base model `{base}`" in card and "`lora.safetensors` + `lora.json`" in card
    again = export(out, "--to", "hf", "--out", tmp_path / "merged")  # an export of the export
    assert again.exit_code == 0, again.output
    assert torch.equal(logits(wmtp_model(tmp_path / "merged")), logits(wmtp_model(run)))

    shutil.move(base, tmp_path / "moved-away")
    line = _line_of(out / "recipe.toml", f'path = "{base}"')
    eval_args = ["eval", str(out), "--no-progress", "--set", "evaluation.max_problems=1"]
    for result in (
        export(out, "--to", "hf", "--out", tmp_path / "no"),
        CliRunner().invoke(app, eval_args),
    ):
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in flat, flat
        assert f"{out / 'recipe.toml'}:{line}:1: model.policy.path:" in flat, flat
        assert "the base model that the LoRA adapters in" in flat and "reading" not in flat
    assert not (tmp_path / "no").exists()


def _line_of(file, text: str) -> int:
    return next(n for n, line in enumerate(file.read_text().splitlines(), 1) if line == text)


def test_a_two_rank_fsdp_run_exports_from_its_consolidated_file(fsdp_run, tmp_path):
    from transformers import AutoModelForCausalLM

    trained = logits(wmtp_model(fsdp_run))
    for to in ("hf", "meta"):
        out = tmp_path / to
        result = export(fsdp_run, "--to", to, "--out", out)
        assert result.exit_code == 0, result.output
        assert torch.equal(logits(wmtp_model(out)), trained)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, trained[:, :, 0])
    assert '"world_size": 2' in (tmp_path / "hf" / "README.md").read_text()


def test_the_sharded_state_alone_consolidates_without_a_process_group(fsdp_run, tmp_path):
    """Both ranks' DCP files, read in this (non-distributed) process, give the same export."""
    import torch.distributed as dist

    copy = tmp_path / "run"
    shutil.copytree(fsdp_run, copy)
    step = copy / "checkpoints" / "step-3"
    assert sorted(p.name for p in (step / "state").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    (step / "model.safetensors").unlink()
    assert not dist.is_initialized()
    for to in ("hf", "meta"):
        result = export(copy, "--to", to, "--out", tmp_path / to)
        assert result.exit_code == 0, result.output
        assert torch.equal(logits(wmtp_model(tmp_path / to)), logits(wmtp_model(fsdp_run)))
    assert not (step / "model.safetensors").exists()  # the source is left as it was


def test_adapters_merged_for_a_narrower_dtype_are_rounded_once(lora_run, tmp_path):
    """An fp32 LoRA run exported in bf16: each weight is ``W + (alpha / r) B A`` computed from
    the trained fp32 tensors, then rounded to bf16 once (not W and the adapters rounded first)."""
    from safetensors.torch import load_file

    from wmtp.models.lora import fold_lora

    merged = wmtp_model(lora_run, fold_adapters=False)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    fold_lora(merged)
    for to, weights in (("wmtp", "model.safetensors"), ("meta", "consolidated.pth")):
        out = tmp_path / to
        assert export(lora_run, "--to", to, "--out", out, "--dtype", "bfloat16").exit_code == 0
        file = out / weights
        written = load_file(file) if to == "wmtp" else torch.load(file, weights_only=True)
        for name, tensor in merged.state_dict().items():
            assert written[name].dtype == torch.bfloat16, (to, name)
            assert torch.equal(written[name], tensor.to(torch.bfloat16)), (to, name)
