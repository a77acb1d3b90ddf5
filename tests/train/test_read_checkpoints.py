"""A checkpoint that another command reads is not pruned under it: real ``wmtp run`` and ``wmtp
export`` / ``wmtp eval`` processes, the trainer paused as it is about to prune (``keep_last = 1``)
while the reader starts, the reader paused once it found its checkpoint while the trainer goes on."""

from __future__ import annotations

import pytest
import torch

from tests.paused import PausedCommand
from tests.train.train_helpers import TINY, runs_override
from tests.unprivileged import other_user  # noqa: F401  # a fixture

TRAIN = (
    "training.max_steps=3",
    "training.schedule.warmup_steps=1",
    "training.micro_batch_size=2",
    "training.eval_every=0",
    "training.checkpoint_every=1",
    "training.keep_last=1",
)

EXPORT = (["--to", "wmtp", "--no-progress"], "wmtp.export.source", "verify_checkpoint")
EVAL = (
    ["--no-progress", "--set", "evaluation.max_problems=1", "--set", "evaluation.n_samples=1",
     "--set", "evaluation.max_new_tokens=4"],
    "wmtp.eval.target", "load_policy",
)  # fmt: skip
READERS = {
    # reader: (command, its options, the call it pauses at once it found its weights, whether it
    # runs as another user: a colleague, who cannot write in the run directory)
    "export": ("export", EXPORT, False),
    "eval": ("eval", EVAL, False),
    "export by a colleague": ("export", EXPORT, True),
}


@pytest.mark.minutes(1)
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_checkpoint_being_read_is_kept_past_keep_last_and_read_whole(reader, tmp_path, request):
    command, (options, module, call), colleague = READERS[reader]
    place, as_user = tmp_path, None
    if colleague:
        user = request.getfixturevalue("other_user")
        place, as_user = user.place, user.running
    trainer = PausedCommand(
        "wmtp.train.checkpoint", "_remove_unless_read",
        ["run", TINY, *(a for s in TRAIN for a in ("--set", s)), "--set", runs_override(place)],
        place / "trainer",
    )  # fmt: skip
    trainer.wait_until_paused()  # step-2 written, step-1 about to be pruned
    (run,) = (place / "runs").glob("*/2*")
    # export names a checkpoint; eval a run directory, whose newest checkpoint it takes
    source = run / "checkpoints" / "step-1" if command == "export" else run
    read = run / "checkpoints" / ("step-1" if command == "export" else "step-2")
    out = (place / "home" if colleague else place) / "read"
    signals = place / "reader"
    signals.mkdir(mode=0o777)
    signals.chmod(0o777)
    argv = [command, source, *options, "--out", out]
    reading = PausedCommand(module, call, argv, signals, as_user=as_user)
    reading.wait_until_paused()

    code, said = trainer.go()
    assert code == 0, said
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == sorted({read.name, "step-3"}), said  # the other one went as keep_last says
    assert f"{read} kept past keep_last = 1: another wmtp command reads it now" in said
    # the run ended with the reader still reading: no later checkpoint will prune it, said so
    ends = f"{read} stays past keep_last = 1: another wmtp command still reads it as the run ends"
    assert ends in " ".join(said.split()), said

    code, said = reading.go()
    assert code == 0, said
    if command == "export":
        from safetensors.torch import load_file

        exported = load_file(out / "model.safetensors")
        trained = load_file(read / "model.safetensors")
        assert exported.keys() == trained.keys()
        assert all(torch.equal(exported[k], trained[k]) for k in trained)
    else:
        assert (out / "humaneval" / "summary.json").is_file()
