"""A stop signal at the moments between a command's steps that must go together, or once the
command has ended (``tests.signal_at`` sends it from inside the real process at that moment):
said with the signal's exit code, nothing lost, nothing left half-swapped or hidden."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.train.train_helpers import REPO

EVAL_SETS = ("--set", "evaluation.max_problems=2", "--set", "evaluation.n_samples=1",
             "--set", "evaluation.max_new_tokens=8", "--no-progress")  # fmt: skip


def signalled(at: str, *args) -> subprocess.CompletedProcess:
    """``wmtp ARGS`` in a subprocess that sends itself a signal ``at`` (tests.signal_at)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.signal_at", at, "--", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def shown(done: subprocess.CompletedProcess) -> str:
    return " ".join((done.stdout + done.stderr).split())


def test_ctrl_c_between_an_exports_two_renames_keeps_the_new_export_in_place(tiny_run, tmp_path):
    """``--force`` swaps the old folder out and the new one in: a signal in between waits for the
    swap (it hid the old export in ``.OUT.replaced-PID`` and deleted the new one)."""
    out = tmp_path / "hf"
    first = signalled("wmtp.cli:_done:after:SIGINT", "export", tiny_run, "--to", "hf", "--out",
                      out, "--dtype", "float32", "--no-progress")  # fmt: skip
    assert first.returncode == 0 and "Traceback" not in shown(first), shown(first)[-2000:]
    done = signalled("wmtp.output_folder:_replaced_prefix:after:SIGINT:2", "export", tiny_run,
                     "--to", "hf", "--out", out, "--force", "--dtype", "bfloat16",
                     "--no-progress")  # fmt: skip
    assert done.returncode == 130 and "stopped: SIGINT" in shown(done), shown(done)[-2000:]
    assert "Traceback" not in shown(done)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"  # the new
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hf.")) in (
        [],
        [".hf.lock"],
    ), list(tmp_path.iterdir())


def test_sigterm_while_an_evaluation_loads_is_said_with_exit_143(tiny_run, tmp_path):
    done = signalled("wmtp.eval.target:prepare_eval:after:SIGTERM", "eval", tiny_run, "--out",
                     tmp_path / "e", *EVAL_SETS)  # fmt: skip
    assert done.returncode == 143 and "stopped: SIGTERM" in shown(done), shown(done)[-2000:]
    assert "Traceback" not in shown(done)


def test_ctrl_c_once_results_are_written_leaves_them_whole_and_nothing_partial(tiny_run, tmp_path):
    done = signalled("wmtp.eval.evaluator:_write:before:SIGINT", "eval", tiny_run, "--out",
                     tmp_path / "e", *EVAL_SETS)  # fmt: skip
    assert done.returncode == 130 and "Traceback" not in shown(done), shown(done)[-2000:]
    results = tmp_path / "e" / "humaneval"
    assert (results / "summary.json").is_file() and not list(results.glob(".partial*"))


def test_a_signal_after_the_command_has_ended_changes_nothing(tiny_run, tmp_path):
    """Ctrl-C while torch's exit handlers run: the command's own exit code, no traceback (it was
    130 without a word, or a KeyboardInterrupt traceback from an atexit handler)."""
    done = signalled("wmtp.cli:_done:after:SIGINT", "report", tiny_run, "--out", tmp_path / "r")
    assert done.returncode == 0 and "Traceback" not in shown(done), shown(done)[-2000:]
    assert (tmp_path / "r" / "report.md").is_file()


def test_sigterm_while_a_report_is_written_is_said_and_leaves_no_folder(tiny_run, tmp_path):
    done = signalled("wmtp.eval.report:write_report:before:SIGTERM", "report", tiny_run, "--out",
                     tmp_path / "r")  # fmt: skip
    assert done.returncode == 143 and "stopped: SIGTERM" in shown(done), shown(done)[-2000:]
    assert not (tmp_path / "r").exists()
