"""``wmtp validate --data``: memory sized by the longest row of the recipe's real data, on tiny
recipes whose JSONL datasets the tests write (byte tokenizer: one token per UTF-8 byte)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.cli import app
from wmtp.commands._validate import fast_main
from wmtp.data.examples import format_prompt
from wmtp.estimate import estimate
from wmtp.recipe import load_recipe
from wmtp.train.lengths import longest_row

MAX_LENGTH = 1024
MICRO = 4

BASELINE = f"""\
[experiment]
name = "padded"
pipeline = "baseline"

[tokenizer]
kind = "byte"

[model.policy]
flavour = "small"
dtype = "float32"
attention = "sdpa"

[training]
micro_batch_size = {MICRO}
max_steps = 10

[data]
kind = "jsonl"
path = "data/train.jsonl"
max_length = {MAX_LENGTH}
split = {{ heldout_fraction = 0.0 }}
"""
"""A baseline on padded rows; ``data.path`` is on line 19, column 1."""

CRITIC = f"""\
[experiment]
name = "pairs"
pipeline = "critic"

[tokenizer]
kind = "byte"

[model.critic]
kind = "value_model"
flavour = "small"
dtype = "float32"
attention = "sdpa"
head = {{ kind = "linear" }}

[training]
micro_batch_size = {MICRO}
max_steps = 10

[data]
kind = "jsonl"
path = "data/pairs.jsonl"
max_length = {MAX_LENGTH}
split = {{ heldout_fraction = 0.0 }}
pairs = {{ length_bins = [200, 300, 600], max_pairs_per_problem = 4, unique = true }}
"""

INSTRUCTION = "Solve problem {p}."


def row(problem: int, body: str, correct: bool) -> dict:
    return {
        "instruction": INSTRUCTION.format(p=problem),
        "input": "",
        "output": body,
        "problem_id": f"P{problem}",
        "is_correct": correct,
    }


def tokens(r: dict) -> int:
    """Byte tokens of a row as training encodes it: BOS + Alpaca prompt + output + EOS."""
    return len((format_prompt(r["instruction"]) + r["output"]).encode()) + 2


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# Baseline rows: the longest correct row that fits is "x" * 60; an incorrect one is longer (the
# baseline never draws it), and a correct one of 2,000 bytes is over max_length (left out).
PADDED_ROWS = [
    row(0, "x" * 10, True),
    row(0, "x" * 60, True),
    row(1, "y" * 30, True),
    row(1, "z" * 300, False),
    row(2, "w" * 2000, True),
]
PADDED_LONGEST = tokens(PADDED_ROWS[1])

# Critic rows (the prompt is ~160 tokens), length bins (..200], (200..300], (300..600], (600..]:
# problem 0 pairs in the second bin (its short correct row has no incorrect one in the first),
# problem 1 in the first; problem 1's long correct solution has no incorrect one in its bin.
PAIR_ROWS = [
    row(0, "a" * 70, True),
    row(0, "b" * 80, False),
    row(0, "c" * 5, True),
    row(1, "d" * 320, True),
    row(1, "e" * 40, True),
    row(1, "f" * 35, False),
]
PAIR_LONGEST = tokens(PAIR_ROWS[1])


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Both recipes and their datasets in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WMTP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "padded.toml").write_text(BASELINE)
    (tmp_path / "pairs.toml").write_text(CRITIC)
    write_rows(tmp_path / "data" / "train.jsonl", PADDED_ROWS)
    write_rows(tmp_path / "data" / "pairs.jsonl", PAIR_ROWS)
    return tmp_path


def validate(*args: str):
    return CliRunner().invoke(app, ["validate", *args])


def activations_gib(stdout: str) -> float:
    return float(stdout.split("activations ")[1].split(",")[0].split()[0])


def test_the_lengths_of_the_written_data():
    assert 200 < PADDED_LONGEST < 300 and tokens(PADDED_ROWS[3]) > PADDED_LONGEST
    assert tokens(PADDED_ROWS[4]) > MAX_LENGTH
    assert tokens(PAIR_ROWS[2]) <= 200 < tokens(PAIR_ROWS[0]) < PAIR_LONGEST <= 300
    assert 300 < tokens(PAIR_ROWS[3]) <= 600
    assert tokens(PAIR_ROWS[5]) < tokens(PAIR_ROWS[4]) <= 200


def test_padded_examples_size_memory_by_the_longest_example(workdir):
    plain, sized = validate("padded.toml"), validate("padded.toml", "--data")
    assert plain.exit_code == sized.exit_code == 0, sized.output
    line = (
        f"  memory sized at rows of {PADDED_LONGEST} tokens (longest in the data, of 3 correct "
        f"training rows; max_length {MAX_LENGTH:,})\n"
    )
    assert line in sized.stdout and "memory sized" not in plain.stdout
    assert 0 < activations_gib(sized.stdout) < activations_gib(plain.stdout) / 5
    # Everything else is the report without --data.
    assert (
        sized.stdout.replace(line, "").split("memory/GPU")[0] == plain.stdout.split("memory/GPU")[0]
    )


def test_critic_pairs_size_memory_by_the_longest_solution_that_can_pair(workdir):
    result = validate("pairs.toml", "--data", "--format", "json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["recipes"]
    assert report["estimate"]["row_tokens"] == PAIR_LONGEST
    assert report["estimate"]["row_tokens_from"] == "data"
    plain = json.loads(validate("pairs.toml", "--format", "json").stdout)["recipes"][0]
    assert "row_tokens" not in plain["estimate"]
    with_data, without = report["estimate"], plain["estimate"]
    assert (
        with_data["memory_gib_per_gpu"]["activations"]
        < without["memory_gib_per_gpu"]["activations"]
    )
    for key in ("world_size", "effective_batch", "tokens_per_step", "parameters", "notes"):
        assert with_data[key] == without[key]  # tokens per step stay the max_length bound
    text = validate("pairs.toml", "--data").stdout
    assert f"rows of {PAIR_LONGEST} tokens (longest in the data, of 4 solutions that can pair" in (
        text
    )


@pytest.mark.parametrize("compile", ["false", "true"])
def test_the_length_is_what_training_batches_have(workdir, compile):
    """The rows training pads: every drawable example (or pair) in one batch is as long (with
    compiled blocks, rounded up to their padding multiple as the trainer sets it)."""
    from wmtp import assembly
    from wmtp.data.tokenizers import ByteTokenizer
    from wmtp.train.lengths import drawn_rows, pairable_rows

    for name, rows_of, batches in [
        ("padded.toml", drawn_rows, lambda data, r: data.batches(r, len(r))),
        ("pairs.toml", pairable_rows, None),
    ]:
        recipe = load_recipe(name, [f"parallel.compile={compile}"]).recipe
        data = assembly.dataset(recipe, ByteTokenizer(), progress=False)
        data.pad_multiple = recipe.parallel.pad_multiple("cuda")
        rows = rows_of(data)
        if batches is None:  # pairs: every epoch's pairs, padded together
            pairs = [data.epoch_pairs(e) for e in range(20)]
            batch = next(data.pair_batches([p for ps in pairs for p in ps], 10_000))["chosen"]
        else:
            batch = next(batches(data, rows))
        assert batch["input_ids"].shape[1] == longest_row(recipe).tokens


def test_activations_by_hand(workdir):
    """The activation and logits bytes of the module docstring's formula at the data's row."""
    recipe = load_recipe("padded.toml").recipe
    row = longest_row(recipe).tokens
    assert row == PADDED_LONGEST
    memory = estimate(recipe, row_tokens=row).memory
    # small: dim 256, 6 layers, 8 heads of 32, 4 KV heads, SwiGLU 2/3 * 4 * 256 -> 704; 4 heads.
    dim, kv_dim, ffn, layers, heads, vocab, b = 256, 4 * 32, 704, 6, 4, 259, 4
    per_layer = 6 * dim + 2 * kv_dim + 4 * ffn
    saved_layers = (layers - heads) + 1  # the trunk, and one head at a time (per_head)
    tokens = MICRO * row
    assert memory.activations == b * tokens * saved_layers * per_layer
    assert memory.logits == tokens * vocab * (b + 4)
    full = estimate(recipe).memory
    assert full.activations == b * MICRO * MAX_LENGTH * saved_layers * per_layer
    assert memory.states == full.states and memory.gathered == full.gathered
    assert estimate(recipe, row_tokens=MAX_LENGTH) == estimate(recipe)


def test_eager_attention_scores_are_sized_by_the_row(workdir):
    recipe = load_recipe("padded.toml", ["model.policy.attention=eager"]).recipe
    sdpa = load_recipe("padded.toml").recipe
    extra = (
        estimate(recipe, row_tokens=100).memory.activations
        - estimate(sdpa, row_tokens=100).memory.activations
    )
    assert extra == 4 * (MICRO * 100) * 3 * (2 * 8 * 100)  # b * T * layers * 2 * n_heads * R


def test_truncation_and_packing(workdir):
    truncated = load_recipe("padded.toml", ["data.truncate=true"]).recipe
    assert longest_row(truncated).tokens == MAX_LENGTH  # the 2,000-byte row, cut
    result = validate("padded.toml", "--data", "--set", "data.packing=true")
    assert result.exit_code == 0, result.output
    assert "memory sized at rows of 1,024 tokens (packed rows of max_length)" in result.stdout
    report = json.loads(
        validate("padded.toml", "--data", "--set", "data.packing=true", "--format", "json").stdout
    )
    assert report["recipes"][0]["estimate"]["row_tokens_from"] == "max_length"


def test_difficulty_sampling_draws_only_bins_of_positive_weight(workdir):
    rows = [{**r, "difficulty": 11 if r["problem_id"] == "P0" else 1} for r in PADDED_ROWS]
    write_rows(workdir / "data" / "train.jsonl", rows)  # problem 0 (the longest row) is hard
    sampling = 'data.sampling={kind="difficulty", bins={easy=[1, 5], hard=[6, 20]}, weights=%s}'
    drawn = load_recipe("padded.toml", [sampling % "{easy=1.0, hard=1.0}"]).recipe
    assert longest_row(drawn).tokens == PADDED_LONGEST
    easy_only = load_recipe("padded.toml", [sampling % "{easy=1.0, hard=0.0}"]).recipe
    assert longest_row(easy_only).tokens == tokens(PADDED_ROWS[2])  # problem 1's "y" * 30


def test_no_pair_to_draw_is_a_located_problem(workdir):
    bins = "data.pairs.length_bins=[195, 230, 600]"  # every correct row apart from the incorrect
    result = validate("pairs.toml", "--data", "--set", bins)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--set {bins}: data.pairs.length_bins: no (correct, incorrect) pair" in result.stderr


def test_a_missing_data_file_is_a_located_problem(workdir):
    (workdir / "data" / "train.jsonl").unlink()
    result = validate("padded.toml", "--data")
    assert result.exit_code == 2
    assert "padded.toml:19:1: data.path: dataset file not found: data/train.jsonl" in result.stderr
    assert "Traceback" not in result.output
    assert validate("padded.toml").exit_code == 0  # without --data the data is not read
    report = json.loads(validate("padded.toml", "--data", "--format", "json").stdout)
    (problem,) = report["recipes"][0]["problems"]
    assert (problem["file"], problem["line"], problem["key"]) == ("padded.toml", 19, "data.path")


def test_a_missing_tokenizer_is_a_located_problem(workdir):
    result = validate(
        "padded.toml", "--data", "--set", 'tokenizer={kind="sentencepiece", path="gone.model"}'
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "tokenizer.path: tokenizer file not found: gone.model" in result.stderr


def test_an_unbuilt_humaneval_is_a_note_with_the_command_that_builds_it(workdir):
    """A fresh clone's recipe is valid: its first run builds HumanEval (minutes of sandboxed
    runs, which a check never starts). Memory is sized by max_length, and the note gives the
    command that builds the dataset where the run would look for it."""
    data = 'data={kind="humaneval", cache_dir="empty", max_length=1024}'
    result = validate("padded.toml", "--data", "--set", data)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    built = "empty/v2-heldout0.05"  # the kind changed by --set: split.heldout_fraction default
    assert f"is not built in {built}, so its rows were not read" in flat
    assert f"`wmtp data humaneval {built} --heldout-fraction 0.05` now" in flat
    assert not (workdir / "empty").exists()  # nothing was built
    report = json.loads(validate("padded.toml", "--data", "--set", data, "--format", "json").stdout)
    assert report["recipes"][0]["estimate"]["row_tokens_from"] == "max_length"


def test_the_fast_path_agrees_and_never_caches_data_reports(workdir, capsys):
    for argv in (
        ["padded.toml", "pairs.toml", "--data"],
        ["--data", "--format", "json", "pairs.toml"],
    ):
        typer_run = validate(*argv)
        for _ in range(2):
            assert fast_main(argv) == typer_run.exit_code == 0
            assert capsys.readouterr().out == typer_run.stdout
    assert not (workdir / "cache").exists()
    (workdir / "data" / "pairs.jsonl").unlink()
    assert fast_main(["pairs.toml", "--data"]) == 2


def test_help_documents_data():
    result = CliRunner().invoke(app, ["validate", "--help"])
    assert "--data" in result.stdout and "longest row" in result.stdout


PLAIN_REPORT = """\
padded.toml: ok (padded, pipeline baseline)
  batch 4 sequences/step (4 x 1 accum x 1 GPU), 4,096 tokens/step
  model.policy: {params} parameters, {params} trained
  memory/GPU ~0.29 GiB (full_shard, world size 1): states 0.07, gathered 0.01, activations 0.21, logits 0.01
"""


def test_without_data_the_report_is_as_before(workdir):
    """No row fields, no extra line: the estimate of the recipe's numbers alone."""
    recipe = load_recipe("padded.toml").recipe
    report = json.loads(validate("padded.toml", "--format", "json").stdout)["recipes"][0]
    assert report["estimate"] == estimate(recipe).to_json()
    params = f"{estimate(recipe).models[0].total:,}"
    assert validate("padded.toml").stdout == PLAIN_REPORT.format(params=params)


SAMPLED = BASELINE + (
    'sampling = { kind = "difficulty", bins = { easy = [1, 5], hard = [6, 20] }, '
    "weights = { easy = 1.0, hard = 1.0 } }\n"
)
"""The baseline drawing by difficulty: ``data.sampling`` on line 22."""


@pytest.mark.parametrize(
    "difficulty, says",
    [
        (None, "padded.toml:22:14: data.sampling.kind: 'difficulty', but none of the 3 training "
         "rows it draws from has a difficulty (train.jsonl's optional field): set "
         "data.sampling = { kind = 'uniform' }, or give the rows a difficulty"),
        (1, "padded.toml:22:101: data.sampling.weights.hard: 1.0, but no training row's "
         "difficulty is in data.sampling.bins.hard: set its weight to 0 or widen the bin"),
    ],
    ids=["no_difficulty", "empty_bin"],
)  # fmt: skip
def test_difficulty_sampling_that_draws_nothing_from_a_bin_is_located(workdir, difficulty, says):
    """Rows without the optional ``difficulty`` (or none in a weighted bin) under difficulty
    sampling: ``validate --data`` and ``run`` say so at the recipe's line, exit 2 (the run said
    it unlocated, and validate said "no correct training row" or nothing at all)."""
    (workdir / "padded.toml").write_text(SAMPLED)
    if difficulty is not None:
        rows = [{**r, "difficulty": difficulty} for r in PADDED_ROWS]
        write_rows(workdir / "data" / "train.jsonl", rows)
    result = validate("padded.toml", "--data")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert says in " ".join(result.stderr.split()), result.stderr
    run = CliRunner().invoke(app, ["run", "padded.toml", "--set", "training.max_steps=1"])
    flat = " ".join(run.output.split())
    assert run.exit_code == 2 and "Traceback" not in flat and says in flat, flat[-3000:]


@pytest.mark.parametrize(
    ("rows", "key", "said"),
    [
        (  # every problem's rows correct: no bins could pair them, the data is the cause
            [row(0, "a" * 70, True), row(1, "b" * 40, True)],
            "data.path",
            "no problem has both a correct and an incorrect training row to pair",
        ),
        (  # a correct and an incorrect row of problem 0, in two length bins: the bins are
            [row(0, "c" * 5, True), row(0, "a" * 70, False)],
            "data.pairs.length_bins",
            "no (correct, incorrect) pair of one problem in one length bin",
        ),
    ],
)
def test_a_critic_with_nothing_to_pair_is_located_at_what_would_change_it(workdir, rows, key, said):
    write_rows(workdir / "data" / "pairs.jsonl", rows)
    result = validate("pairs.toml", "--data")
    assert result.exit_code == 2 and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert f"{key}: {said}" in flat, flat
