"""``wmtp.atomic``: a file is replaced whole or not at all, and no temporary file outlives a
failed or interrupted write (the full-disk case through the CLI: tests/data/test_data_commands.py)."""

from __future__ import annotations

import os

import pytest

from wmtp.atomic import replaced, write_lines


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    write_lines(target, (f"{i}\n" for i in range(3)))
    assert target.read_text() == "0\n1\n2\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_write_stopped_part_way_keeps_the_old_file_and_removes_its_temporary(tmp_path, stop):
    target = tmp_path / "train_metadata.json"
    target.write_text("the old metadata")

    def lines():
        yield "half of the new"
        raise stop

    with pytest.raises(type(stop)) as raised:
        write_lines(target, lines())
    assert target.read_text() == "the old metadata"
    assert os.listdir(tmp_path) == ["train_metadata.json"]
    if isinstance(raised.value, OSError):  # said with the file it was writing, not the temporary
        assert raised.value.filename == str(target) and raised.value.errno == 28


def test_a_symlink_is_replaced_in_one_step(tmp_path):
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-2").mkdir()
    link = tmp_path / "latest"
    link.symlink_to("run-1")
    with replaced(link) as tmp:
        tmp.symlink_to("run-2")
    assert os.readlink(link) == "run-2" and sorted(os.listdir(tmp_path)) == [
        "latest", "run-1", "run-2",
    ]  # fmt: skip
