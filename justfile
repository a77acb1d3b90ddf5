# Developer tasks. `pip install -e ".[dev]"` brings `just` (rust-just) along.

# install the project with its dev tools (CPU torch)
setup:
    python -m pip install torch==2.13.0 -e ".[dev]"

# the README's main job: train the tiny recipe on CPU
tiny:
    wmtp run recipes/tiny.toml

# run the test suite (two worker processes; `just test -n 0 ...` for one)
test *ARGS:
    python -m pytest -n 2 {{ARGS}}

# lint and check formatting
lint:
    ruff check wmtp tests
    ruff format --check wmtp tests

# format the code
fmt:
    ruff format wmtp tests
    ruff check --fix wmtp tests

# regenerate schemas/recipe.schema.json from the pydantic models
schema:
    wmtp schema

# validate every recipe
validate:
    wmtp validate
