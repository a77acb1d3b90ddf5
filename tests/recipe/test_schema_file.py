"""schemas/recipe.schema.json: fresh, a valid JSON Schema, complete, and it checks recipe files."""

from __future__ import annotations

import json
import shutil
import subprocess

import jsonschema
import pytest

from wmtp.recipe._toml import loads as toml_loads
from wmtp.recipe.jsonschema import render_json_schema
from wmtp.recipe.schema import Recipe, Section

from .conftest import RECIPES, REPO

SCHEMA_FILE = REPO / "schemas" / "recipe.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def test_committed_schema_is_fresh():
    assert SCHEMA_FILE.read_text() == render_json_schema(), "stale: run `wmtp schema`"


def test_it_is_a_valid_draft7_schema(schema):
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_every_property_is_documented(schema):
    undocumented = [
        f"{name}.{prop}"
        for name, definition in [("Recipe", schema), *schema["definitions"].items()]
        for prop, body in definition.get("properties", {}).items()
        if not body.get("description")
    ]
    assert undocumented == []


def test_every_recipe_starts_with_the_schema_line_and_passes_it(schema):
    validator = jsonschema.Draft7Validator(schema)
    for path in sorted(RECIPES.glob("*.toml")):
        text = path.read_text()
        assert text.startswith("#:schema ../schemas/recipe.schema.json\n"), path.name
        errors = [e.message for e in validator.iter_errors(toml_loads(text))]
        assert errors == [], path.name


@pytest.mark.parametrize(
    "bad",
    [
        {"experiment": {"nmae": "x"}},  # unknown key
        {"weighting": {"kind": "tdd"}},  # unknown kind
        {"weighting": {"kind": "td", "gamma": 2.0}},  # out of range
        {"training": {"lr": "fast"}},  # wrong type
        {"model": {"policy": {"attention": "spda"}}},  # unknown choice
    ],
)
def test_the_schema_rejects_what_the_loader_rejects(schema, bad):
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_a_partial_recipe_that_extends_another_passes(schema):
    partial = {"extends": "base.toml", "weighting": {"gamma": 0.9}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(partial)) == []


def test_field_docs_exist_for_every_section_field():
    from wmtp.recipe.docs import field_docs
    from wmtp.recipe.jsonschema import _sections

    missing = [
        f"{cls.__name__}.{name}"
        for cls in _sections(Recipe, Section)
        for name in cls.model_fields
        if name not in field_docs(cls)
    ]
    assert missing == []


def _taplo(*args: str, cwd) -> subprocess.CompletedProcess:
    taplo = shutil.which("taplo")
    if taplo is None:
        pytest.skip("taplo is not installed (pip install taplo, a dev dependency)")
    return subprocess.run(
        [taplo, "check", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_taplo_accepts_every_recipe_through_its_schema_line():
    result = _taplo(*sorted(str(p) for p in RECIPES.glob("*.toml")), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]


def test_taplo_flags_mistakes_through_the_schema(tmp_path):
    (tmp_path / "schemas").mkdir()
    shutil.copy(SCHEMA_FILE, tmp_path / "schemas" / "recipe.schema.json")
    (tmp_path / "recipes").mkdir()
    bad = tmp_path / "recipes" / "bad.toml"
    bad.write_text(
        '#:schema ../schemas/recipe.schema.json\n[experiment]\npipline = "x"\n'
        '[weighting]\nkind = "td"\ngamma = 2.0\n'
    )
    result = _taplo(str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "'pipline' was unexpected" in result.stderr
    assert '{"kind":"td","gamma":2.0}' in result.stderr


def test_wmtp_schema_writes_its_own_file_and_never_over_anything_else(tmp_path):
    from typer.testing import CliRunner

    from wmtp.cli import app

    def schema(out):
        result = CliRunner().invoke(app, ["schema", "-o", str(out)])
        return result.exit_code, " ".join(result.output.split())

    out = tmp_path / "schemas" / "recipe.schema.json"
    assert schema(out) == (0, f"wrote {out}")
    assert schema(out) == (0, f"wrote {out} (unchanged)")
    assert json.loads(out.read_text()) == json.loads(render_json_schema())
    mine = tmp_path / "mine.toml"  # a recipe given as -o by mistake: it was overwritten
    shutil.copy(RECIPES / "tiny.toml", mine)
    (tmp_path / "folder").mkdir()
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe")
    for other in (mine, tmp_path / "folder", tmp_path / "bytes.json"):
        code, said = schema(other)
        assert code == 2 and f"--output {other}: holds something other than a recipe schema" in said
    assert mine.read_text() == (RECIPES / "tiny.toml").read_text()


def test_the_jsonl_dataset_is_described_as_its_reader_reads_it(schema):
    """Editors show these descriptions: the row fields the reader takes and the folder layout
    it needs (they said ``prompt, solution`` and "a directory of ``*.jsonl``")."""
    from wmtp.data.jsonl import OPTIONAL_FIELDS, REQUIRED_FIELDS

    jsonl = schema["definitions"]["JsonlDataSpec"]
    for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        assert f"``{field}``" in jsonl["description"], field
    assert "prompt" not in jsonl["description"] and "solution," not in jsonl["description"]
    for text in (jsonl["description"], jsonl["properties"]["path"]["description"]):
        assert "a directory holding ``train.jsonl``" in text
