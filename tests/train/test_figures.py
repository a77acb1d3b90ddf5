"""A step's figures: device tensors and numbers read in one copy, in order, group by group; the
device-side flag that skips a bad step."""

from __future__ import annotations

import math

import pytest
import torch

from wmtp.train.figures import PendingFigures, mean_figures, read_figures
from wmtp.train.guards import nonfinite_flag


def test_figures_come_back_as_floats_in_their_groups_and_order():
    loss = torch.tensor([2.5, 7.0])[0]  # a view, as a head's loss is
    groups = {
        "step": {"loss": loss, "tokens": 12, "norm": torch.tensor([[0.5]])},
        "logged": {"loss": torch.tensor(1.25, dtype=torch.bfloat16), "lr": 0.1},
    }
    read = PendingFigures(groups).wait()
    assert read == {
        "step": {"loss": 2.5, "tokens": 12.0, "norm": 0.5},
        "logged": {"loss": 1.25, "lr": 0.1},
    }
    assert list(read["step"]) == ["loss", "tokens", "norm"]
    assert all(type(v) is float for g in read.values() for v in g.values())


def test_a_figure_must_be_one_number():
    with pytest.raises(AssertionError, match="'acc' has shape \\(2,\\)"):
        read_figures({"acc": torch.ones(2)})


def test_mean_figures_count_a_missing_name_as_zero():
    means = mean_figures([{"a": torch.tensor(2.0), "b": 1.0}, {"a": 4.0}])
    assert read_figures(means) == {"a": 3.0, "b": 0.5}


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ([torch.tensor(1.0), 2.0, torch.tensor([3.0])], False),
        ([torch.tensor(1.0), math.nan], True),
        ([torch.tensor(math.inf), 2.0], True),
        ([torch.tensor(-math.inf, dtype=torch.bfloat16)], True),
        ([1.0, 2.0], False),
    ],
)
def test_the_flag_is_set_by_any_non_finite_value_number_or_tensor(values, bad):
    flag = nonfinite_flag(values, torch.device("cpu"))
    assert flag.dtype == torch.bool and flag.shape == () and bool(flag) is bad
