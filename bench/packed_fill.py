"""How full the packed rows of a run were: the fraction of positions holding real tokens, per step.

    python bench/packed_fill.py RECIPE [--set K=V ...] --steps N --window A B

Rebuilds the run's global batches on CPU exactly as the trainer draws them (any world size sees the
same global rows) and prints the mean fill over steps A..B. Runs before the trainer counted packed
tokens without the padding at rows' ends (bench/results/h200x4_production.md) are corrected by it.
"""

from __future__ import annotations

import argparse

from wmtp import assembly
from wmtp.recipe import load_recipe
from wmtp.train.data_source import PackedRows, StepBatches


def fill_per_step(recipe_path: str, sets: list[str], steps: int, rows: int) -> list[float]:
    """Fill of each of the first ``steps`` global batches of ``rows`` rows."""
    recipe = load_recipe(recipe_path, sets).recipe
    assert recipe.pipeline.examples == "solutions", "packed rows hold solutions, not pairs"
    data = assembly.dataset(recipe, assembly.tokenizer(recipe), progress=False)
    length = data.train.max_length
    batches = StepBatches(
        lambda epoch: data.epoch_order(epoch, correct_only=True),
        lambda indices: indices,
        micro_batch_size=rows,  # the whole global batch as one
        grad_accum_steps=1,
        packed=PackedRows(length, data.example_length, lambda packed: packed),
    )
    fills = []
    for _ in range(steps):
        (packed,) = batches.next_step()
        used = sum(data.example_length(int(i)) for row in packed for i in row)
        fills.append(used / (len(packed) * length))
    return fills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--world-size", type=int, default=1, help="GPUs of the run")
    parser.add_argument("--window", type=int, nargs=2, required=True, metavar=("FIRST", "LAST"))
    args = parser.parse_args()
    t = load_recipe(args.recipe, args.sets).recipe.training
    rows = t.micro_batch_size * t.grad_accum_steps * args.world_size
    fills = fill_per_step(args.recipe, args.sets, args.steps, rows)
    first, last = args.window
    window = fills[first - 1 : last]
    print(f"mean fill of steps {first}-{last}: {sum(window) / len(window):.4f}")


if __name__ == "__main__":
    main()
