"""Whole runs of the weighted pipelines on a tiny model and a tiny JSONL dataset (CPU, seconds):
critic -> verifiable (td and its controls), ref_tuning -> rho1, and the bad inputs around them."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from wmtp.errors import CheckpointError
from wmtp.recipe.errors import RecipeProblems
from wmtp.train.manifest import write_manifest
from wmtp.train.runner import run_recipe

pytestmark = pytest.mark.slow

MODEL = """
flavour = "tiny"
dim = 32
n_layers = {layers}
n_heads = 2
n_kv_heads = 1
max_seq_len = 128
dtype = "float32"
attention = "sdpa"
"""


def _dataset(path):
    """8 problems, each with 2 correct and 2 incorrect one-line solutions (short byte texts)."""
    lines = []
    for p in range(8):
        for i, (op, ok) in enumerate([("+", True), ("+ 0 +", True), ("-", False), ("*", False)]):
            lines.append(
                {
                    "instruction": f"Add {p} and x.",
                    "output": f"def f{i}(x):\n    return {p} {op} x\n",
                    "problem_id": f"p{p}",
                    "is_correct": ok,
                }
            )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _recipe(tmp_path, name, pipeline, body):
    data = _dataset(tmp_path / "train.jsonl")
    text = f"""
[experiment]
name = "{name}"
pipeline = "{pipeline}"
seed = 0
runs_dir = "{tmp_path / "runs"}"

[tokenizer]
kind = "byte"

[parallel]
device = "cpu"
sharding = "no_shard"

[training]
micro_batch_size = 4
grad_accum_steps = 2
lr = 3e-3
max_steps = 4
log_every = 1
eval_every = 0
checkpoint_every = 0

[data]
kind = "jsonl"
path = "{data}"
max_length = 128
template = "plain"
split = {{ heldout_fraction = 0.25 }}
{body}
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _policy(heads=2):
    return (
        '[model.policy]\nkind = "llama_mtp"\n'
        + MODEL.format(layers=2 + heads)
        + f"n_future_tokens = {heads}\n"
    )


def _critic(tmp_path, checkpoint=None, **extra):
    lines = [
        "[model.critic]",
        'kind = "value_model"',
        MODEL.format(layers=2),
        'head = { kind = "linear" }',
    ]
    if checkpoint:
        lines.append(f'checkpoint = "{checkpoint}"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def critic_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("critic")
    recipe = _recipe(tmp, "critic", "critic", "")
    pairs = "pairs = { length_bins = [64, 128], max_pairs_per_problem = 2 }\n"  # in [data]
    loss = "[training.critic_loss]\nlambda_return_weight = 0.1\n"
    recipe.write_text(recipe.read_text() + pairs + _critic(tmp) + loss)
    result = run_recipe(recipe, console=False)
    return tmp, result


def test_critic_run_logs_pair_figures(critic_run):
    _, result = critic_run
    records = _metrics(result.run_dir)
    train = [r for r in records if "train/pair_accuracy" in r]
    assert len(train) == 4 and all(0 <= r["train/pair_accuracy"] <= 1 for r in train)
    assert all(r["train/pairs"] == 8 for r in train)  # micro 4 x accum 2
    heldout = [r for r in records if "heldout/pair_accuracy" in r]
    assert heldout and heldout[-1]["heldout/pairs"] > 0
    assert all(math.isfinite(r["loss"]) for r in train)


@pytest.mark.parametrize("kind", ["td", "shuffled", "random_matched"])
def test_verifiable_weights_tokens_with_the_trained_critic(critic_run, kind):
    tmp, _ = critic_run
    body = _policy() + _critic(tmp, checkpoint=tmp / "runs" / "critic" / "latest")
    body += f'[weighting]\nkind = "{kind}"\nmin_weight = 0.2\nmax_weight = 2.0\nnormalize = {{ kind = "ema", momentum = 0.5, warmup_steps = 1 }}\n'
    result = run_recipe(_recipe(tmp, f"verifiable_{kind}", "verifiable", body), console=False)
    records = [r for r in _metrics(result.run_dir) if "weight/mean" in r]
    assert len(records) == 4
    for r in records:
        assert 0.2 - 1e-6 <= r["weight/min"] <= r["weight/mean"] <= r["weight/max"] <= 2.0 + 1e-6
        assert 0 <= r["weight/clipped_min"] <= 1 and 0 <= r["weight/clipped_max"] <= 1
        assert r["loss/weighted_to_unweighted"] > 0 and math.isfinite(r["loss"])
        assert {"loss/head1_weighted", "loss/head2_unweighted"} <= r.keys()
    # the run records which checkpoint `runs/critic/latest` was when it started
    inputs = json.loads((result.run_dir / "inputs.json").read_text())
    critic_step = (tmp / "runs" / "critic" / "latest").resolve() / "checkpoints" / "step-4"
    assert inputs["model.critic.checkpoint"]["resolved"] == str(critic_step)


def test_verifiable_resume_continues_the_ema_exactly(critic_run):
    tmp, _ = critic_run
    body = _policy() + _critic(tmp, checkpoint=tmp / "runs" / "critic" / "latest")
    body += '[weighting]\nkind = "shuffled"\nnormalize = { kind = "ema", momentum = 0.3, warmup_steps = 1 }\n'
    recipe = _recipe(tmp, "verifiable_resume", "verifiable", body)
    whole = _metrics(run_recipe(recipe, console=False).run_dir)
    text = recipe.read_text().replace("checkpoint_every = 0", "checkpoint_every = 2")
    recipe.write_text(text)
    first = run_recipe(recipe, stop_at_step=2, console=False)
    # `latest` moves on (here: to a critic run with no checkpoint); the resume keeps its critic
    latest = tmp / "runs" / "critic" / "latest"
    before = os.readlink(latest)
    (tmp / "runs" / "critic" / "untrained").mkdir()
    latest.unlink()
    latest.symlink_to("untrained")
    try:
        resumed = _metrics(run_recipe(None, resume=first.run_dir, console=False).run_dir)
    finally:
        latest.unlink()
        latest.symlink_to(before)
    losses = lambda rs: [r["loss"] for r in rs if "weight/mean" in r]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-6)


def test_critic_with_another_tokenizer_is_refused(critic_run, tmp_path):
    _, critic = critic_run
    copy = tmp_path / "critic_copy"
    shutil.copytree(critic.run_dir, copy)
    for saved in copy.rglob("recipe.toml"):
        saved.write_text(
            saved.read_text().replace('kind = "byte"', 'kind = "hf"\npath = "other/tokenizer.json"')
        )
    for step in (copy / "checkpoints").glob("step-*"):  # a run trained so, not a damaged one
        write_manifest(step)
    body = _policy() + _critic(tmp_path, checkpoint=copy) + '[weighting]\nkind = "td"\n'
    recipe = _recipe(tmp_path, "verifiable_bad_tok", "verifiable", body)
    with pytest.raises(RecipeProblems) as refused:  # before torch, at the recipe's line
        run_recipe(recipe, console=False)
    line = 1 + Path(recipe).read_text().splitlines().index(f'checkpoint = "{copy}"')
    said = refused.value.render()
    assert f"{recipe}:{line}:1: model.critic.checkpoint: " in said, said
    assert (
        "was trained with tokenizer {'kind': 'hf'" in said
        and "[tokenizer] is {'kind': 'byte'}" in said
    )


def test_a_frozen_critic_with_another_vocabulary_than_the_policy_is_refused(tmp_path):
    body = _policy() + _critic(tmp_path, vocab_size=300) + '[weighting]\nkind = "td"\n'
    with pytest.raises(CheckpointError, match=r"model\.critic has a vocabulary of 300 tokens"):
        run_recipe(_recipe(tmp_path, "verifiable_bad_vocab", "verifiable", body), console=False)


def test_critic_of_another_shape_is_refused(critic_run, tmp_path):
    tmp, _ = critic_run
    critic = _critic(tmp_path, checkpoint=tmp / "runs" / "critic" / "latest").replace(
        "dim = 32", "dim = 48"
    )
    body = _policy() + critic + '[weighting]\nkind = "td"\n'
    with pytest.raises(CheckpointError, match="shape"):
        run_recipe(_recipe(tmp_path, "verifiable_bad_shape", "verifiable", body), console=False)


def test_critic_with_another_value_head_is_refused_naming_the_key(critic_run, tmp_path):
    """A sigmoid head holds the linear head's tensors: only the trained run's recipe tells them
    apart. ``wmtp run`` says which key differs, exit 2, no traceback."""
    import subprocess
    import sys

    tmp, _ = critic_run
    critic = _critic(tmp_path, checkpoint=tmp / "runs" / "critic" / "latest")
    body = _policy() + critic.replace('"linear"', '"sigmoid"') + '[weighting]\nkind = "td"\n'
    recipe = _recipe(tmp_path, "verifiable_bad_head", "verifiable", body)
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(recipe)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
    )
    message = " ".join(done.stderr.split())  # rich wraps long lines
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model.critic.head = {'kind': 'sigmoid'}, but model.critic.checkpoint" in message
    assert "was trained with head = {'kind': 'linear'}" in message
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    result = run_recipe(_recipe(tmp, "ref_tuning", "ref_tuning", _policy(heads=2)), console=False)
    return tmp, result


def _reference(checkpoint, **extra):
    lines = [
        "[model.reference]",
        'kind = "llama_mtp"',
        MODEL.format(layers=4),
        "n_future_tokens = 1",
        f'checkpoint = "{checkpoint}"',
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_rho1_keeps_k_percent_per_head(reference_run):
    tmp, _ = reference_run
    body = (
        _policy()
        + _reference(tmp / "runs" / "ref_tuning" / "latest")
        + '[weighting]\nkind = "rho1"\nk_percent = 0.4\n'
    )
    result = run_recipe(_recipe(tmp, "rho1", "rho1", body), console=False)
    records = [r for r in _metrics(result.run_dir) if "rho1/k_percent" in r]
    assert len(records) == 4
    for r in records:
        assert r["rho1/k_percent"] == 0.4
        for k in (1, 2):  # ceil per micro-batch: at most one token per micro-batch above 40%
            assert 0.4 <= r[f"rho1/kept_fraction_head{k}"] <= 0.4 + 2 * 2 / r[f"tokens/head{k}"]
        assert math.isfinite(r["loss"])


def test_reference_with_another_vocabulary_is_refused(reference_run, tmp_path):
    tmp, _ = reference_run
    body = _policy() + _reference(tmp / "runs" / "ref_tuning" / "latest", vocab_size=300)
    body = body.replace("[model.policy]", "[model.policy]\nvocab_size = 300")
    body += '[weighting]\nkind = "rho1"\n'
    with pytest.raises(CheckpointError, match=r"tok_embeddings\.weight"):
        run_recipe(_recipe(tmp_path, "rho1_bad_vocab", "rho1", body), console=False)


def test_two_ranks_with_a_sharded_critic_match_one_process(critic_run, tmp_path):
    """torchrun, gloo, FSDP2 full_shard: the frozen critic is sharded like the policy, the batch
    whitening is all-reduced, so two ranks of 2 rows weight and train as one process of 4 rows."""
    import os
    import subprocess
    import sys

    tmp, _ = critic_run
    body = _policy() + _critic(tmp, checkpoint=tmp / "runs" / "critic" / "latest")
    body += '[weighting]\nkind = "td"\nnormalize = { kind = "batch" }\n'
    recipe = _recipe(tmp_path, "verifiable_ranks", "verifiable", body)
    common = [
        "training.grad_accum_steps=1",
        "training.max_steps=3",
        "parallel.sharding='full_shard'",
    ]
    one = run_recipe(recipe, [*common, "training.micro_batch_size=4"], console=False)
    sets = [*common, "training.micro_batch_size=2", f"experiment.runs_dir='{tmp_path / 'two'}'"]
    cmd = [sys.executable, "-m", "wmtp.cli", "run", str(recipe), "--nproc-per-node", "2"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = _metrics((tmp_path / "two" / "verifiable_ranks" / "latest").resolve())
    want = [r for r in _metrics(one.run_dir) if "weight/mean" in r]
    got = [r for r in two if "weight/mean" in r]
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "weight/mean", "weight/std", "weight/min", "weight/max"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), key


def test_two_ranks_resume_their_own_control_weights_exactly(critic_run, tmp_path):
    """Each rank draws the ``shuffled`` control's weights from its own generator: a 2-rank run
    resumed on 2 ranks from its step-2 checkpoint (through the CLI) gives the uninterrupted
    run's losses exactly, which needs rank 1's generator back, not rank 0's."""
    import subprocess
    import sys

    tmp, _ = critic_run
    body = _policy() + _critic(tmp, checkpoint=tmp / "runs" / "critic" / "latest")
    body += '[weighting]\nkind = "shuffled"\nnormalize = { kind = "ema", momentum = 0.3 }\n'
    recipe = _recipe(tmp_path, "verifiable_rank_state", "verifiable", body)
    sets = [
        "training.grad_accum_steps=1",
        "training.micro_batch_size=2",
        "training.checkpoint_every=2",
        "training.schedule.warmup_steps=1",
        "parallel.sharding='full_shard'",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")

    def two_ranks(*args: str) -> None:
        cmd = [sys.executable, "-m", "wmtp.cli", "run", *args, "--nproc-per-node", "2"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    two_ranks(str(recipe), *(a for s in sets for a in ("--set", s)))
    whole = (tmp_path / "runs" / "verifiable_rank_state" / "latest").resolve()
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    two_ranks("--resume", str(resumed))
    losses = lambda run: [(r["step"], r["loss"]) for r in _metrics(run) if "loss" in r]  # noqa: E731
    assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4]
    assert losses(resumed) == losses(whole)


def test_a_stopped_verifiable_run_keeps_its_critic_checkpoint_from_the_critics_pruning(
    critic_run, tmp_path, caplog
):
    """A verifiable run stopped part way is resumed later, after its critic's run trained on with
    ``keep_last = 1``: the critic checkpoint it loads stayed (a pin naming the run, dropped once
    it finishes), so the resume loads the same critic and matches an uninterrupted run. Before,
    the critic's pruning removed it and the resume was refused for good."""
    import shutil

    source, _ = critic_run
    shutil.copytree(  # without the pins of this module's runs that were stopped
        source / "runs" / "critic", tmp_path / "runs" / "critic", symlinks=True,
        ignore=shutil.ignore_patterns(".pinned-by"),
    )  # fmt: skip
    latest = tmp_path / "runs" / "critic" / "latest"
    body = _policy() + _critic(tmp_path, checkpoint=latest)
    body += (
        '[weighting]\nkind = "td"\nnormalize = { kind = "ema", momentum = 0.3, warmup_steps = 1 }\n'
    )
    recipe = _recipe(tmp_path, "verifiable_pinned", "verifiable", body)
    recipe.write_text(recipe.read_text().replace("checkpoint_every = 0", "checkpoint_every = 2"))
    whole = _metrics(run_recipe(recipe, console=False).run_dir)
    critic_step = latest.resolve() / "checkpoints" / "step-4"
    assert not list((critic_step / ".pinned-by").glob("*"))  # the finished run let it go
    stopped = run_recipe(recipe, stop_at_step=2, console=False).run_dir
    assert len(list((critic_step / ".pinned-by").glob("*"))) == 1
    more = ["training.max_steps=6", "training.checkpoint_every=1", "training.keep_last=1"]
    with caplog.at_level("INFO", logger="wmtp.train.checkpoint"):
        run_recipe(None, more, resume=latest.resolve(), force=True, console=False)
    assert critic_step.is_dir(), "the critic's keep_last pruned the checkpoint a run still needs"
    assert f"run {stopped} loads it as a frozen model and has not finished" in caplog.text
    resumed = _metrics(run_recipe(None, resume=stopped, console=False).run_dir)
    losses = lambda rs: [r["loss"] for r in rs if "weight/mean" in r]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-6)
    assert not list((critic_step / ".pinned-by").glob("*"))
