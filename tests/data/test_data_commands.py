"""``wmtp data index`` and ``wmtp data humaneval`` through the real CLI app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import wmtp.data.humaneval as he
from tests.data.data_rows import problem_rows, write_dataset
from tests.sandbox.isolations import HAS_BWRAP, child_env, path_without_bwrap
from tests.small_disk import needs_small_disk
from wmtp.cli import app

runner = CliRunner()


def test_index_builds_missing_metadata_then_checks_it(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(3, 2, 1))
    first = runner.invoke(app, ["data", "index", str(path)])
    assert first.exit_code == 0, first.output
    meta = json.loads((tmp_path / "train_metadata.json").read_text())
    assert meta["n_rows"] == 9 and len(meta["problem_index_map"]) == 3
    again = runner.invoke(app, ["data", "index", str(tmp_path)])
    assert again.exit_code == 0 and "agrees with train.jsonl (9 rows)" in again.output


def test_index_reports_a_bad_line_with_file_and_line(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"is_correct": true', '"is_correct": "yes"')
    lines[2] = lines[2].replace('"is_correct": false', '"is_correct": "no"')
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "index", str(path)])
    assert result.exit_code == 2
    assert (
        f"{path}:3: field 'is_correct' must be true or false, got \"yes\""
        in result.output.replace("\n", "")
    )


def test_index_rebuilds_metadata_of_an_edited_file_and_reports_one_that_disagrees(tmp_path):
    """Metadata of another version of the file (its sha256) is out of date: rebuilt, said.
    Metadata without the hash (older) that disagrees with the rows is a located error."""
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    assert runner.invoke(app, ["data", "index", str(path)]).exit_code == 0
    with open(path, "a") as f:
        f.write(path.read_text().splitlines()[0] + "\n")
    result = runner.invoke(app, ["data", "index", str(path)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "out of date (train.jsonl was edited since); rebuilt" in flat
    meta_path = tmp_path / "train_metadata.json"
    meta = json.loads(meta_path.read_text())
    assert meta["n_rows"] == 5
    with open(path, "a") as f:
        f.write(path.read_text().splitlines()[0] + "\n")
    del meta["source_sha256"]
    meta_path.write_text(json.dumps(meta))
    result = runner.invoke(app, ["data", "index", str(path)])
    assert result.exit_code == 2 and "says n_rows = 5, but" in result.output.replace("\n", "")


WRONG_TYPES = [  # another tool's metadata: each edit and the key the error names
    (lambda m: m.update(n_rows="9"), 'n_rows should be a whole number, got "9"'),
    (lambda m: m.update(problem_index_map="oops"), 'problem_index_map should be an object'),
    (lambda m: m["problem_index_map"].update(P1=[]), 'problem_index_map["P1"] should be an object'),
    (lambda m: m["problem_index_map"]["P0"].update(correct_indices=["0", "1"]),
     'problem_index_map["P0"].correct_indices should be a list of whole numbers from 0'),
    (lambda m: m["problem_index_map"]["P2"].update(incorrect_token_lengths=["a"]),
     'problem_index_map["P2"].incorrect_token_lengths should be a list of whole numbers from 1'),
    (lambda m: m["problem_index_map"]["P2"].update(incorrect_token_lengths=[10**12]),
     'problem_index_map["P2"].incorrect_token_lengths should be a list of whole numbers from 1 to 2^31 - 1, got [1000000000000]'),
    (lambda m: m["problem_index_map"]["P1"].update(difficulty="hard"), 'problem_index_map["P1"].difficulty should be null or'),
    (lambda m: m.update(tokenizer=None), "tokenizer should be a string, got null"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), WRONG_TYPES)
def test_metadata_of_the_wrong_types_is_refused_naming_the_key(tmp_path, edit, message):
    """``data index`` (the check) and ``validate --data`` read the metadata as ``run`` does
    (``JsonlDataset``): a value of the wrong type is a located error with exit 2, never a
    traceback."""
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(3, 2, 1))
    assert runner.invoke(app, ["data", "index", str(path)]).exit_code == 0
    meta_path = tmp_path / "train_metadata.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    recipe = [
        "recipes/tiny.toml",
        "--set",
        f"data={{kind='jsonl', path='{tmp_path}', max_length=512}}",
    ]
    for command in (["data", "index", str(path)], ["validate", "--data", *recipe]):
        result = runner.invoke(app, command)
        flat = " ".join(result.output.split())
        assert result.exit_code == 2, (command, result.output)
        assert f"{meta_path}: {message}" in flat, (command, flat)
        assert "Traceback" not in result.output


def test_index_counts_the_recorded_lengths_again(tmp_path):
    """Metadata of the same bytes whose token lengths are wrong does not 'agree': the check
    counts every row and names the first that differs."""
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(3, 2, 1))
    assert runner.invoke(app, ["data", "index", str(path)]).exit_code == 0
    meta_path = tmp_path / "train_metadata.json"
    meta = json.loads(meta_path.read_text())
    counted = meta["problem_index_map"]["P1"]["correct_token_lengths"]
    meta["problem_index_map"]["P1"]["correct_token_lengths"] = [counted[0], 1]
    meta_path.write_text(json.dumps(meta))
    result = runner.invoke(app, ["data", "index", str(path)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "agrees" not in flat
    assert f"{path}:5: {counted[1]} tokens, but {meta_path} records 1" in flat
    assert "wmtp data index" in flat and "--force` rebuilds it" in flat


def test_metadata_that_is_a_folder_is_said(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    (tmp_path / "train_metadata.json").mkdir()
    result = runner.invoke(app, ["data", "index", str(path)])
    flat = " ".join(result.output.split())
    assert (
        result.exit_code == 2
        and "train_metadata.json: not a file, where train.jsonl's metadata goes" in flat
    )
    assert "Traceback" not in result.output


def test_humaneval_command_without_bubblewrap_stops_before_any_work(tmp_path):
    out = tmp_path / "he"
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "data", "humaneval", str(out)],
        env=child_env(path_without_bwrap(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"error: sandbox: building the HumanEval dataset in {out} needs bubblewrap, which cannot "
        "run here: bwrap is not installed: not found on PATH."
    )
    assert "apt-get install bubblewrap" in done.stderr and "--sandbox rlimits" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "opt_in",
    [
        pytest.param([], marks=pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap unusable")),
        ["--sandbox", "rlimits"],
    ],
    ids=["bwrap", "rlimits"],
)
def test_humaneval_command_builds_and_reports(tmp_path, monkeypatch, opt_in):
    everything = he.load_problems()
    monkeypatch.setattr(
        he, "load_problems", lambda: {t: everything[t] for t in ["HumanEval/0", "HumanEval/7"]}
    )
    monkeypatch.setenv("WMTP_SANDBOX", "")  # restored after --sandbox sets it
    if opt_in:
        monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    result = runner.invoke(
        app, ["data", "humaneval", str(tmp_path / "he"), "--heldout-fraction", "0.5", *opt_in]
    )
    assert result.exit_code == 0, result.output
    kind = "rlimits" if opt_in else "bwrap"
    assert f"sandbox: {kind}: " in result.output
    assert "train: 1 problems" in result.output and "heldout: 1 problems" in result.output
    assert (tmp_path / "he" / "train_metadata.json").is_file()
    info = json.loads((tmp_path / "he" / "build_info.json").read_text())
    assert info["isolation"].startswith("rlimits" if opt_in else "bubblewrap")


@pytest.fixture
def two_problems(monkeypatch):
    """Two HumanEval problems (a build of seconds, were it to start) and no sandbox choice from
    the environment: each test opts in to rlimits itself."""
    everything = he.load_problems()
    monkeypatch.setattr(
        he, "load_problems", lambda: {t: everything[t] for t in ["HumanEval/0", "HumanEval/7"]}
    )
    monkeypatch.setenv("WMTP_SANDBOX", "")


def build_into(out) -> object:
    """``wmtp data humaneval OUT`` through the CLI, sandboxed by rlimits (usable everywhere)."""
    args = ["data", "humaneval", str(out), "--heldout-fraction", "0.5", "--sandbox", "rlimits"]
    return runner.invoke(app, args)


@pytest.mark.parametrize(
    ("out_name", "message"),
    [("notes.txt", "{out}: not a directory"), ("notes.txt/he", "cannot be created: {file} is")],
    ids=["out-is-a-file", "parent-is-a-file"],
)
def test_humaneval_refuses_an_out_that_is_no_directory_before_any_work(
    tmp_path, two_problems, out_name, message
):
    file = tmp_path / "notes.txt"
    file.write_text("my notes\n")
    out = tmp_path / out_name
    result = build_into(out)
    assert result.exit_code == 2, result.output
    flat = result.output.replace("\n", " ")
    assert message.format(out=out, file=file) in flat and "labelling" not in flat
    assert file.read_text() == "my notes\n"


@pytest.mark.parametrize("users_file", ["train.jsonl", "build_info.json"])
def test_humaneval_never_replaces_files_it_did_not_write(tmp_path, two_problems, users_file):
    ds = tmp_path / "ds"
    ds.mkdir()
    mine = ds / users_file
    if users_file == "train.jsonl":
        write_dataset(mine, problem_rows(2, 1, 1))
    else:  # a build_info.json of the user's own, not the builder's
        mine.write_text('{"version": 2, "note": "my dataset"}\n')
    before = mine.read_bytes()
    result = build_into(ds)
    assert result.exit_code == 2, result.output
    flat = result.output.replace("\n", "")
    assert f"{ds}: already holds {users_file}, which the HumanEval build would replace" in flat
    assert "give a new or empty directory, or move those files away first" in flat
    assert "labelling" not in flat and mine.read_bytes() == before
    assert sorted(p.name for p in ds.iterdir()) == [users_file]


@pytest.mark.slow
def test_humaneval_rebuilds_its_own_earlier_output(tmp_path, two_problems):
    out = tmp_path / "he"
    assert build_into(out).exit_code == 0
    (out / "heldout.jsonl").unlink()  # a file of the earlier build removed: nothing to lose
    again = build_into(out)
    assert again.exit_code == 0, again.output
    info = json.loads((out / "build_info.json").read_text())
    train = out / "train.jsonl"
    assert len(train.read_text().splitlines()) == info["train"]["rows"] > 1
    assert sorted(p.name for p in out.iterdir()) == [
        "build_info.json",
        "heldout.jsonl",
        "heldout_metadata.json",
        "train.jsonl",
        "train_metadata.json",
    ]


USERS_ROW = {"instruction": "MY OWN ROW", "input": "", "output": "pass", "problem_id": "MINE",
             "is_correct": True}  # fmt: skip


@pytest.mark.parametrize("recorded_by", ["build_info", "metadata"])
def test_humaneval_refuses_to_replace_its_files_edited_since(tmp_path, two_problems, recorded_by):
    """A row the user added to an earlier build's train.jsonl was lost to a rebuild: the
    rebuild is refused, naming the file and --force, which replaces it. Builds that recorded
    no sha256 in build_info.json are told by the one their metadata records."""
    out = tmp_path / "he"
    assert build_into(out).exit_code == 0
    if recorded_by == "metadata":  # a build_info.json of before the sha256 were recorded
        info = json.loads((out / "build_info.json").read_text())
        info.pop("sha256", None)
        (out / "build_info.json").write_text(json.dumps(info))
    train = out / "train.jsonl"
    with open(train, "a") as f:
        f.write(json.dumps(USERS_ROW) + "\n")
    edited = train.read_bytes()
    result = build_into(out)
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, flat
    assert f"{out}: train.jsonl changed since the earlier `wmtp data humaneval` wrote" in flat
    assert "give --force to replace them" in flat and "labelling" not in flat
    assert train.read_bytes() == edited and "Traceback" not in result.output
    forced = runner.invoke(app, ["data", "humaneval", str(out), "--heldout-fraction", "0.5",
                                 "--sandbox", "rlimits", "--force"])  # fmt: skip
    assert forced.exit_code == 0, forced.output
    assert "MY OWN ROW" not in train.read_text()


@pytest.mark.parametrize("given", ["file", "directory"])
def test_index_refuses_an_empty_dataset_naming_it(tmp_path, given):
    good = write_dataset(tmp_path / "good.jsonl", problem_rows(2, 1, 1))
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["data", "index", str(empty if given == "file" else tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"{empty}: empty dataset (no lines)" in result.output.replace("\n", "")
    assert not (tmp_path / "train_metadata.json").exists()
    assert not (tmp_path / "good_metadata.json").exists()  # checked before any is indexed
    assert good.is_file()


def test_index_of_a_folder_passes_over_an_empty_heldout_file(tmp_path):
    """`wmtp data humaneval --heldout-fraction 0` writes an empty heldout.jsonl: the folder is
    indexed, that file named and left out."""
    write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    (tmp_path / "heldout.jsonl").write_text("")
    result = runner.invoke(app, ["data", "index", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "heldout.jsonl: empty, not indexed" in result.output.replace("\n", "")
    assert (tmp_path / "train_metadata.json").is_file()
    assert not (tmp_path / "heldout_metadata.json").exists()


def test_index_of_a_folder_indexes_what_training_reads_and_names_the_rest(tmp_path):
    """`wmtp data index DIR` stopped at an unrelated *.jsonl (a log), leaving train.jsonl
    unindexed; a folder without train.jsonl had its other files indexed, though no run reads
    them. Now: train.jsonl and heldout.jsonl, the rest named; no train.jsonl: refused as a
    run refuses it."""
    write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    rows = problem_rows(3, 1, 1)[4:]  # problem P2 only
    write_dataset(tmp_path / "heldout.jsonl", rows)
    (tmp_path / "a_log.jsonl").write_text('{"note": "my log"}\n')
    result = runner.invoke(app, ["data", "index", str(tmp_path)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, flat
    assert f"{tmp_path}: not indexed: a_log.jsonl" in flat
    assert (tmp_path / "train_metadata.json").is_file()
    assert json.loads((tmp_path / "heldout_metadata.json").read_text())["n_rows"] == 2
    assert not (tmp_path / "a_log_metadata.json").exists()
    other = tmp_path / "other"
    other.mkdir()
    write_dataset(other / "mydata.jsonl", problem_rows(2, 1, 1))
    result = runner.invoke(app, ["data", "index", str(other)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, flat
    assert f"{other}: a dataset directory needs train.jsonl (it has: ['mydata.jsonl'])" in flat
    assert not (other / "mydata_metadata.json").exists()


def jsonl_recipe_args(command: str, data: Path, tmp_path: Path) -> list[str]:
    """``wmtp COMMAND recipes/tiny.toml`` over the JSONL dataset ``data``."""
    sets = [f"data={{kind='jsonl', path='{data}', max_length=512}}",
            f"experiment.runs_dir='{tmp_path / 'runs'}'"]  # fmt: skip
    return [*command.split(), "recipes/tiny.toml", *(a for s in sets for a in ("--set", s))]


@pytest.mark.parametrize("command", ["validate --data", "run --dry-run"])
def test_an_empty_train_file_is_said_to_be_empty_by_run_and_validate(tmp_path, command):
    """They said "no training rows are left" (or "no correct training row to draw"), and
    suggested a `wmtp data index` that then refused the file as empty."""
    (tmp_path / "empty").mkdir()
    empty = tmp_path / "empty" / "train.jsonl"
    empty.write_text("")
    result = runner.invoke(app, jsonl_recipe_args(command, empty.parent, tmp_path))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, flat
    assert f"{empty}: empty dataset (no lines)" in flat, flat
    assert "no training rows are left" not in flat and "no correct training row" not in flat
    assert "Traceback" not in result.output


def test_the_data_report_counts_one_row_in_the_singular(tmp_path):
    """It said "1 training rows (0 correct), 0 held-out rows of 0 problems"."""
    data = write_dataset(tmp_path / "train.jsonl", problem_rows(1, 0, 1))
    result = runner.invoke(app, jsonl_recipe_args("validate --data", data, tmp_path))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "no correct training row to draw" in flat, flat
    assert "data: 1 training row (0 correct), 0 held-out rows of 0 problems" in flat


FULL_DISK_INDEX = """
set -u
mount -t tmpfs -o size={size}k tmpfs {data}
cp {jsonl} {data}/train.jsonl
{wmtp} data index {data}; echo "FIRST EXIT $?"
ls -a {data}; echo "LISTED"
cmp {jsonl} {data}/train.jsonl && echo "DATA WHOLE"
mount -o remount,size=16m {data}
{wmtp} data index {data}; echo "SECOND EXIT $?"
ls -a {data}
"""


@needs_small_disk
def test_a_full_disk_during_an_index_says_so_and_leaves_no_partial_file(tmp_path):
    """The dataset folder is a tmpfs with room for the JSONL and a fraction of its metadata: the
    index says which file could not be written and why (exit 2, no traceback), the data is
    untouched and no partial metadata or temporary file is left; with room, it indexes."""
    jsonl = tmp_path / "source.jsonl"
    rows = (json.dumps({"instruction": "Add.", "output": "x" * 20, "problem_id": f"P{i % 500}",
                        "is_correct": True}) + "\n" for i in range(20_000))  # fmt: skip
    jsonl.write_text("".join(rows))  # 2 MB; its metadata ~470 kB
    data = tmp_path / "data"
    data.mkdir()
    script = FULL_DISK_INDEX.format(
        size=jsonl.stat().st_size // 1024 + 128, data=data, jsonl=jsonl,
        wmtp=f"{sys.executable} -m wmtp.cli",
    )  # fmt: skip
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = done.stdout + done.stderr
    assert "FIRST EXIT 2" in out, out[-3000:]
    flat = " ".join(out.split())
    assert f"cannot write {data}/" in flat and "no space left on device" in flat, out[-3000:]
    listed = out[out.index("FIRST EXIT") : out.index("LISTED")].split()
    assert sorted(set(listed) - {"FIRST", "EXIT", "2", ".", ".."}) == ["train.jsonl"], listed
    assert "DATA WHOLE" in out and "Traceback" not in out
    assert "SECOND EXIT 0" in out and "20000 rows, 500 problems" in flat, out[-3000:]


def test_ctrl_c_during_an_index_says_so_and_leaves_no_metadata(tmp_path):
    """A command without its own stop handling (wmtp data index) says 'stopped: SIGINT',
    exit 130, no traceback; the metadata, written whole or not at all, is not there."""
    import signal
    import time

    path = tmp_path / "train.jsonl"
    line = json.dumps({"instruction": "Add.", "output": "x" * 200, "problem_id": "P",
                       "is_correct": True}) + "\n"  # fmt: skip
    path.write_text(line * 300_000)  # ~70 MB: seconds of reading
    child = subprocess.Popen(
        [sys.executable, "-m", "wmtp.cli", "data", "index", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.0)
    assert child.poll() is None, "the index ended before it could be stopped"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "stopped: SIGINT (Ctrl-C)" in err, err[-2000:]
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_a_data_path_that_names_no_rows_says_what_it_names(tmp_path):
    """The metadata named instead of the rows, or a train.jsonl that is a folder: said as such
    by data index and validate (a problem at data.path, not a note that it is missing)."""
    (tmp_path / "ds").mkdir()
    path = write_dataset(tmp_path / "ds" / "train.jsonl", problem_rows(2, 1, 1))
    assert runner.invoke(app, ["data", "index", str(path)]).exit_code == 0
    (tmp_path / "folder" / "train.jsonl").mkdir(parents=True)
    cases = [
        (path.with_name("train_metadata.json"), "the rows' metadata, not the rows: give the .jsonl"),
        (tmp_path / "folder", f"{tmp_path / 'folder' / 'train.jsonl'}: a folder, not the rows' file"),
        (tmp_path / "folder" / "train.jsonl", "train.jsonl: a folder, not the rows' file"),
    ]  # fmt: skip
    for given, said in cases:
        data = f"data={{kind='jsonl', path='{given}', max_length=512}}"
        for command in (
            ["data", "index", str(given)],
            ["validate", "recipes/tiny.toml", "--set", data],
        ):
            result = runner.invoke(app, command)
            flat = " ".join(result.output.split())
            assert result.exit_code == 2 and said in flat, (command, flat)
            assert "input not found" not in flat and "Traceback" not in result.output


def test_index_takes_a_tokenizer_path_only_where_it_reads_one(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    result = runner.invoke(app, ["data", "index", str(path), "--tokenizer-path", "/garbage"])
    assert result.exit_code == 2 and "the byte tokenizer reads no file" in result.output
    result = runner.invoke(app, ["data", "index", str(path), "--tokenizer", "sentencepiece"])
    assert result.exit_code == 2
    assert "--tokenizer sentencepiece needs --tokenizer-path" in " ".join(result.output.split())
    assert not (tmp_path / "train_metadata.json").exists()


def test_a_byte_that_is_not_utf8_is_said_at_its_line_and_byte(tmp_path):
    """A row saved in Latin-1 (``café`` as one byte 0xe9): its line and byte, in words a user
    acts on, not a decoder's message; no metadata is written."""
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    lines = path.read_bytes().splitlines()
    lines[1] = lines[1].replace(b"Solve problem 0.", b"Solve caf\xe9.")
    path.write_bytes(b"\n".join(lines) + b"\n")
    at = lines[1].index(b"\xe9") + 1
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "data", "index", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{path}:2: not UTF-8 text: byte 0xe9 at byte {at} of the line" in flat, flat
    assert not (tmp_path / "train_metadata.json").exists()
