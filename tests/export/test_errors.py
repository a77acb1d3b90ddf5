"""Bad input to ``wmtp export``: each a located error, exit 2, nothing half-written left behind."""

from __future__ import annotations

import shutil

import pytest

from tests.export.export_helpers import export


def leftovers(folder) -> list[str]:
    """Staging or replaced folders an export may have left (hidden names)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the trained run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_a_source_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("train more")
    result = export(tmp_path / "notes", "--to", "hf", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "notes: neither a run directory" in result.flat and "model directory" in result.flat
    result = export(tmp_path / "nowhere", "--to", "meta", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "nowhere: no such run directory" in result.flat
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_model_directory_without_recipe_or_tokenizer_asks_for_a_recipe(tmp_path):
    from wmtp.models.args import flavour
    from wmtp.models.checkpoint import write_meta
    from wmtp.models.llama_mtp import LlamaMTP

    write_meta(LlamaMTP(flavour("tiny").with_vocab(259), attention="sdpa"), tmp_path / "meta")
    result = export(tmp_path / "meta", "--to", "hf", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no recipe.toml" in result.flat and "--recipe" in result.flat


def test_half_written_checkpoints(run_copy, tmp_path):
    out = tmp_path / "out"
    checkpoints = run_copy / "checkpoints"
    shutil.copytree(checkpoints / "step-3", checkpoints / ".tmp-step-6")
    result = export(checkpoints / ".tmp-step-6", "--to", "hf", "--out", out)
    assert result.exit_code == 2 and "a half-written checkpoint" in result.flat

    weights = checkpoints / "step-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a copy cut short
    result = export(run_copy, "--to", "hf", "--out", out)
    assert result.exit_code == 2, result.output
    assert "step-3 is damaged: model.safetensors has" in result.flat  # its manifest says more

    weights.unlink()
    (checkpoints / "step-3" / "state" / ".metadata").unlink()  # DCP writes it last
    result = export(run_copy, "--to", "meta", "--out", out)
    assert result.exit_code == 2 and "step-3 is damaged: state/.metadata is missing" in result.flat
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_run_whose_newest_checkpoint_is_damaged_exports_the_one_before_it(tmp_path, caplog):
    """As ``wmtp eval RUN`` and a resume do: the damaged one named in a warning, the newest
    whole one exported (it was refused, the intact one before it not mentioned)."""
    from safetensors.torch import load_file

    from tests.export.export_helpers import TINY, train

    run = train(tmp_path / "train", TINY, "training.checkpoint_every=1", "training.keep_last=3")
    newest = run / "checkpoints" / "step-3" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-1000])
    with caplog.at_level("WARNING", logger="wmtp.models.locate"):
        result = export(run, "--to", "wmtp", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "step-3 is damaged: model.safetensors has" in caplog.text
    assert "exporting step-2, the one before it" in caplog.text
    exported = load_file(tmp_path / "out" / "model.safetensors")
    trained = load_file(run / "checkpoints" / "step-2" / "model.safetensors")
    assert exported.keys() == trained.keys()
    assert all((exported[k] == trained[k].to(exported[k].dtype)).all() for k in exported)


def test_an_existing_output_directory_is_kept_even_forced(tiny_run, tmp_path):
    """Only an earlier export is replaced (``test_output.py``); other folders stay as they are."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    for force in ([], ["--force"]):
        result = export(tiny_run, "--to", "hf", "--out", out, *force)
        assert result.exit_code == 2, result.output
        assert "is not empty and holds no wmtp_export.json" in result.flat
        assert [p.name for p in out.iterdir()] == ["mine.txt"] and leftovers(tmp_path) == []


def test_command_line_mistakes(tiny_run, tmp_path):
    result = export(tiny_run, "--to", "onnx", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "'onnx' is not one of" in result.flat
    result = export(tiny_run, "--to", "hf", "--out", tmp_path / "out", "--max-shard-size", "big")
    assert result.exit_code == 2 and "--max-shard-size" in result.flat
    assert not (tmp_path / "out").exists()


def test_sizes_of_max_shard_size():
    from wmtp.commands.export import parse_size

    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500mb") == 500 * 10**6 and parse_size("1000") == 1000


def test_options_that_would_do_nothing_are_refused(tiny_run, tmp_path):
    """--max-shard-size shards --to hf only; --no-merge-lora keeps adapters apart, which a run
    without LoRA does not have: each refused, naming the option, before anything is written."""
    out = tmp_path / "out"
    for to in ("meta", "wmtp"):
        result = export(tiny_run, "--to", to, "--out", out, "--max-shard-size", "1MB")
        assert result.exit_code == 2 and "--max-shard-size" in result.flat, result.output
        assert f"--to {to} writes its weights as one file" in result.flat
    result = export(tiny_run, "--to", "wmtp", "--out", out, "--no-merge-lora")
    assert result.exit_code == 2, result.output
    assert "--no-merge-lora:" in result.flat and "trained no LoRA adapters" in result.flat
    assert not out.exists() and leftovers(tmp_path) == []
