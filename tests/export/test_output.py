"""``--out``: what an export may write over. A new path or an empty folder; with ``--force``, an
earlier export (its ``wmtp_export.json`` lists what it wrote) and nothing else: never a trained
run, a working directory, a symbolic link, or files a user added. Every refusal is exit 2 with the
path and the reason, and leaves everything as it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.export.export_helpers import export
from tests.export.test_errors import leftovers
from tests.paused import PausedCommand


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry below ``folder``: a file's bytes, a link's target, ``dir`` for a folder."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            key = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found[key] = os.readlink(path)
            else:
                found[key] = "dir" if path.is_dir() else path.read_bytes()
    return found


@pytest.fixture
def earlier_export(tiny_run, tmp_path) -> Path:
    out = tmp_path / "exports" / "tiny"
    result = export(tiny_run, "--to", "wmtp", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_an_export_lists_what_it_wrote(earlier_export):
    marker = json.loads((earlier_export / "wmtp_export.json").read_text())
    assert marker["written_by"] == "wmtp export"
    on_disk = sorted(p.name for p in earlier_export.iterdir() if p.name != "wmtp_export.json")
    assert marker["files"] == on_disk and "model.safetensors" in on_disk


def test_force_replaces_an_earlier_export(tiny_run, earlier_export):
    result = export(tiny_run, "--to", "hf", "--out", earlier_export)
    assert result.exit_code == 2, result.output
    assert "holds an earlier export" in result.flat and "--force" in result.flat
    assert (earlier_export / "wmtp_model.json").is_file()

    result = export(tiny_run, "--to", "hf", "--out", earlier_export, "--force")
    assert result.exit_code == 0, result.output
    assert (earlier_export / "config.json").is_file()
    assert not (earlier_export / "wmtp_model.json").exists()
    assert leftovers(earlier_export.parent) == []


def test_force_never_replaces_a_trained_run(tiny_run, tmp_path):
    other = tmp_path / "runs" / "other"
    shutil.copytree(tiny_run, other)
    before = tree(other)
    result = export(tiny_run, "--to", "wmtp", "--out", other, "--force")
    assert result.exit_code == 2, result.output
    assert f"--out {other}: is not empty and holds no wmtp_export.json" in result.flat
    assert "even --force will not replace it" in result.flat
    assert tree(other) == before and leftovers(other.parent) == []


def test_force_never_replaces_the_working_directory(tiny_run, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", ".."):  # empty or not, the folder the shell is in stays
        result = export(tiny_run, "--to", "hf", "--out", out, "--force")
        assert result.exit_code == 2, result.output
        assert "holds the working directory" in result.flat
    assert tree(work) == {"notes.txt": b"mine"} and leftovers(tmp_path) == []
    (work / "notes.txt").unlink()
    assert export(tiny_run, "--to", "hf", "--out", ".").exit_code == 2  # an empty one too
    assert work.is_dir() and tree(work) == {}


def test_force_keeps_an_export_that_a_user_added_files_to(tiny_run, earlier_export):
    (earlier_export / "eval-notes.md").write_text("pass@1 looks low")
    before = tree(earlier_export)
    result = export(tiny_run, "--to", "hf", "--out", earlier_export, "--force")
    assert result.exit_code == 2, result.output
    assert "files it did not write (eval-notes.md)" in result.flat
    assert tree(earlier_export) == before


def test_force_keeps_an_export_whose_files_a_user_edited(tiny_run, earlier_export):
    """The card edited after the export wrote it (its size and time differ from the marker's
    record): --force is refused, exit 2, and the edit is kept. Untouched, the same export is
    replaced (test_force_replaces_an_earlier_export)."""
    card = earlier_export / "README.md"
    with card.open("a") as f:
        f.write("\nEvaluated by hand: see our notes.\n")
    before = tree(earlier_export)
    result = export(tiny_run, "--to", "hf", "--out", earlier_export, "--force")
    assert result.exit_code == 2, result.output
    assert "files changed after it wrote them (README.md" in result.flat
    assert tree(earlier_export) == before and leftovers(earlier_export.parent) == []
    marker = json.loads((earlier_export / "wmtp_export.json").read_text())
    assert set(marker["stamps"]) == {f for f in marker["files"] if (earlier_export / f).is_file()}


def test_an_empty_folder_is_used_without_force(tiny_run, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    result = export(tiny_run, "--to", "meta", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "params.json").is_file() and leftovers(tmp_path) == []


def test_force_never_replaces_the_source_export(earlier_export):
    result = export(earlier_export, "--to", "hf", "--out", earlier_export, "--force")
    assert result.exit_code == 2, result.output
    assert "replacing it would delete the source" in result.flat
    assert (earlier_export / "model.safetensors").is_file()


def test_a_symbolic_link_is_refused_and_kept(tiny_run, tmp_path):
    other = tmp_path / "f" / "runs"
    shutil.copytree(tiny_run, other / "run-1")
    (other / "latest").symlink_to("run-1")
    before = tree(tmp_path / "f")
    for force in ([], ["--force"]):
        result = export(tiny_run, "--to", "hf", "--out", other / "latest", *force)
        assert result.exit_code == 2, result.output
        assert f"--out {other / 'latest'}: is a symbolic link (to run-1)" in result.flat
    assert tree(tmp_path / "f") == before  # the link still a link, no .replaced-* beside it


def test_a_file_where_a_folder_must_be(tiny_run, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    result = export(tiny_run, "--to", "hf", "--out", tmp_path / "afile" / "sub")
    assert result.exit_code == 2, result.output
    assert (
        f"--out {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is not a folder" in result.flat
    )
    assert tree(tmp_path) == {"afile": b"not a folder"}

    (tmp_path / "gone").symlink_to("nowhere")
    result = export(tiny_run, "--to", "hf", "--out", tmp_path / "gone" / "sub")
    assert result.exit_code == 2 and "gone is a broken symbolic link" in result.flat


def test_a_second_export_to_a_folder_being_written_is_refused(tiny_run, tmp_path):
    """Two exports to one --out at once: the second is refused at once (exit 2, the first's pid)
    and writes nothing; the first ends as if alone."""
    out = tmp_path / "exports" / "tiny"
    argv = ["export", tiny_run, "--to", "hf", "--out", out, "--no-progress"]
    first = PausedCommand("wmtp.export.tokenizer_files", "write_tokenizer", argv, tmp_path / "s")
    first.wait_until_paused()  # its weights written, under their temporary name
    staging_before = tree(out.parent)

    second = export(tiny_run, "--to", "wmtp", "--out", out, "--force")
    assert second.exit_code == 2, second.output
    assert f"--out {out}: another wmtp export writes this folder now (pid {first.pid} on " \
        in second.flat and "Traceback" not in second.output  # fmt: skip
    assert tree(out.parent) == staging_before

    code, said = first.go()
    assert code == 0, said
    assert (out / "config.json").is_file() and leftovers(out.parent) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # the lock file gone too


def test_an_export_written_meanwhile_is_not_replaced_without_force(tiny_run, tmp_path):
    """An export that found --out empty while another export wrote it whole before this one got
    there: refused at the end rather than replacing that export without --force."""
    out = tmp_path / "tiny"
    argv = ["export", tiny_run, "--to", "hf", "--out", out, "--no-progress"]
    late = PausedCommand("wmtp.export.run", "staged_output", argv, tmp_path / "s")
    late.wait_until_paused()  # its --out checked: empty
    assert export(tiny_run, "--to", "wmtp", "--out", out).exit_code == 0
    written = tree(out)

    code, said = late.go()
    assert code == 2, said
    assert f"--out {out}: another wmtp export wrote this folder while this one ran" in said
    assert "--force" in said and "Traceback" not in said
    assert tree(out) == written and leftovers(tmp_path) == []
