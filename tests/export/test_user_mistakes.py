"""What a user following the README gets wrong with ``wmtp export``: an --out inside the run's
checkpoints, a step the run no longer has, a file for a folder, a run still training, LoRA
adapters trained over a random initialisation. Each a located message (exit 2, no traceback)
or a faithful export, and nothing of the run touched."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.export.export_helpers import TINY, TOKENS, export, logits, train, wmtp_model
from tests.train.train_helpers import REPO, cli


def files_below(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_out_inside_the_runs_checkpoints_is_refused(tiny_run):
    """Training deletes a step-N folder past keep_last, with an export in it."""
    checkpoints = tiny_run / "checkpoints"
    before = files_below(checkpoints)
    for out in (checkpoints / "step-3" / "hf", checkpoints / "hf"):
        result = export(tiny_run, "--to", "hf", "--out", out)
        assert result.exit_code == 2, result.output
        assert f"--out {out}: inside the run's {checkpoints}" in result.flat
        assert "Traceback" not in result.flat and "write the export outside" in result.flat
    assert files_below(checkpoints) == before


def test_a_step_the_run_does_not_have_names_those_it_has(tiny_run, tmp_path):
    result = export(tiny_run / "checkpoints" / "step-99", "--to", "hf", "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert f"step-99: no such checkpoint in the run {tiny_run}" in result.flat
    assert "its checkpoints are step-3" in result.flat and not (tmp_path / "o").exists()


def test_a_file_given_as_source_names_the_folder_to_give(tiny_run, tmp_path):
    step = tiny_run / "checkpoints" / "step-3"
    result = export(step / "model.safetensors", "--to", "hf", "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert f"model.safetensors: a file; export reads the folder that holds it: give {step}" in (
        result.flat
    )
    assert not (tmp_path / "o").exists()


def test_a_run_being_trained_is_exported_with_a_warning(tiny_run, tmp_path, caplog):
    """Its newest checkpoint is a snapshot: said, naming the process training it."""
    hold = "import sys; from pathlib import Path; from wmtp.train.run_dir import training_lock\n"
    hold += (
        "with training_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()"
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", hold, str(tiny_run)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert trainer.stdout.readline() == "held\n"
        with caplog.at_level("WARNING", logger="wmtp.export.run"):
            result = export(tiny_run, "--to", "wmtp", "--out", tmp_path / "out")
    finally:
        trainer.communicate("", timeout=30)
    assert result.exit_code == 0, result.output
    said = " ".join(caplog.text.split())
    assert f"{tiny_run} is still training (pid {trainer.pid} on" in said
    assert "exporting step 3 of 3 planned, its checkpoint so far" in said


@pytest.fixture(scope="module")
def scratch_lora_run(tmp_path_factory):
    """LoRA over no ``model.policy.path``: the base is the run's random initialisation, which
    only the checkpoint's DCP ``state/`` holds (``lora.safetensors`` has the adapters alone)."""
    lora = "model.policy.lora={rank = 4, alpha = 16.0}"
    one_step = ("training.max_steps=1", "training.checkpoint_every=1", "training.lr=1e-2")
    return train(tmp_path_factory.mktemp("scratch-lora"), TINY, lora, *one_step)


def trained_as_it_ran(run):
    """The model as training left it: the checkpoint's whole DCP state, adapters apart."""
    from wmtp.models.checkpoint import read_dcp_model_state

    model = wmtp_model(run, fold_adapters=False)
    model.load_state_dict(read_dcp_model_state(run / "checkpoints" / "step-1" / "state"))
    return model


def test_lora_over_a_random_initialisation_exports_the_base_it_trained_over(
    scratch_lora_run, tmp_path
):
    from transformers import AutoModelForCausalLM

    """In a process of its own, as a user runs it (in this one, a model built without weights
    may reuse the memory that training's freed, and hold its numbers by chance)."""
    out = tmp_path / "hf"
    code, output = cli("export", scratch_lora_run, "--to", "hf", "--out", out, "--no-progress")
    assert code == 0, output
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        exported = hf(TOKENS).logits
    trained = logits(trained_as_it_ran(scratch_lora_run))[:, :, 0]
    torch.testing.assert_close(exported, trained, rtol=1e-5, atol=1e-5)


def test_lora_over_a_random_initialisation_is_not_kept_apart(scratch_lora_run, tmp_path):
    out = tmp_path / "apart"
    result = export(scratch_lora_run, "--to", "wmtp", "--no-merge-lora", "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.flat and "over a random initialisation" in result.flat
    assert "merge them (--merge-lora, the default)" in result.flat and not out.exists()


def test_lora_over_a_random_initialisation_needs_the_state_that_holds_its_base(
    scratch_lora_run, tmp_path
):
    import shutil

    step = tmp_path / "run" / "checkpoints" / "step-1"
    shutil.copytree(scratch_lora_run, tmp_path / "run", ignore=shutil.ignore_patterns("state"))
    result = export(step, "--to", "hf", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"{step}: its LoRA adapters trained over a random initialisation" in result.flat
    assert "only the checkpoint's state/ holds, and it has none" in result.flat
    assert not (tmp_path / "out").exists()


def test_progress_says_the_model_is_read_before_files_are_written(tiny_run, tmp_path):
    """Reading and building a large model on the CPU takes minutes: said while it runs."""
    import io

    from rich.console import Console

    from wmtp.export import export_model

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=300)
    export_model(tiny_run, to="meta", out=tmp_path / "out", progress=True, console=console)
    step = tiny_run / "checkpoints" / "step-3"
    shown = screen.getvalue()
    assert f"reading {step} into a model on the CPU" in shown
    assert shown.index("reading") < shown.index("writing consolidated.pth")


def test_lora_over_a_random_initialisation_is_evaluated_as_it_trained(scratch_lora_run, tmp_path):
    """The model ``wmtp eval`` builds (in a process of its own: see above) is the trained one:
    the base from the checkpoint's ``state/``, the adapters over it."""
    out = tmp_path / "logits.pt"
    code = (
        "import sys, torch\nfrom tests.export.export_helpers import logits, wmtp_model\n"
        "torch.save(logits(wmtp_model(sys.argv[1])), sys.argv[2])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(scratch_lora_run), str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = torch.load(out)
    torch.testing.assert_close(evaluated, logits(trained_as_it_ran(scratch_lora_run)))
