"""The component registry: built-ins load without pip metadata, lookups explain themselves."""

import subprocess
import sys

import pytest

from wmtp import registry
from wmtp.errors import ComponentError


def test_every_builtin_area_registers_components():
    kinds = registry.kinds()
    for kind in (
        "model",
        "attention",
        "tokenizer",
        "dataset",
        "weighting",
        "pipeline",
        "evaluator",
    ):
        assert kind in kinds, f"no {kind} components registered (have {kinds})"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ComponentError, match="did you mean 'baseline'"):
        registry.get("pipeline", "baselin")


def test_builtins_register_without_entry_points(tmp_path):
    """A checkout on PYTHONPATH, never pip-installed, still finds every built-in component."""
    code = (
        "import importlib.metadata as md\n"
        "md.entry_points = lambda **kw: []\n"  # as if no distribution metadata existed
        "import wmtp.registry as r\n"
        "r.entry_points = md.entry_points\n"
        "print(sorted(r.kinds()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'tokenizer'" in out.stdout and "'pipeline'" in out.stdout, out.stdout
