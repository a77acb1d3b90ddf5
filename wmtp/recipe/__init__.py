"""The recipe language: schema, loading (extends, --set, provenance), dumping and diffing.

Importing this package is cheap: the pydantic schema loads on first use of what needs it.
"""

from __future__ import annotations

from wmtp._lazy import lazy_getattr
from wmtp.recipe.dump import dump_recipe
from wmtp.recipe.errors import Problem, RecipeProblems
from wmtp.recipe.load import LoadedRecipe, Source, load_recipe

_LAZY = {
    "Recipe": "wmtp.recipe.schema",
    "Change": "wmtp.recipe.diff",
    "diff_recipes": "wmtp.recipe.diff",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "Change",
    "LoadedRecipe",
    "Problem",
    "Recipe",
    "RecipeProblems",
    "Source",
    "diff_recipes",
    "dump_recipe",
    "load_recipe",
]
