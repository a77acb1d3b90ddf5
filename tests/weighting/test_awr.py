import math

import torch
from torch.overrides import TorchFunctionMode

from tests.weighting.weighting_reference import awr_ref
from wmtp.weighting import awr_weights


def test_worked_example():
    # beta = 2, weights clipped to [0.5, 2]: z/beta = [-2, 0, 0.25, 1] ->
    # clamp to [ln 0.5, ln 2] = [-0.6931, 0.6931] -> exp = [0.5, 1, e^0.25, 2]
    z = torch.tensor([[-4.0, 0.0, 0.5, 2.0, 123.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    w = awr_weights(z, mask, beta=2.0, min_weight=0.5, max_weight=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.0, math.exp(0.25), 2.0, 0.0]]))


def test_matches_reference_and_stays_in_bounds(gen):
    z = torch.randn(4, 50, generator=gen) * 3
    mask = torch.rand(4, 50, generator=gen) > 0.3
    w = awr_weights(z, mask, beta=0.7, min_weight=0.1, max_weight=3.0)
    ref = awr_ref(z.flatten().tolist(), mask.flatten().tolist(), 0.7, 0.1, 3.0)
    torch.testing.assert_close(w.flatten(), torch.tensor(ref))
    assert float(w[mask].min()) >= 0.1 - 1e-6 and float(w[mask].max()) <= 3.0 + 1e-6


class _RecordExp(TorchFunctionMode):
    """Records the number of elements every torch.exp call receives."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.exp, torch.Tensor.exp):
            self.sizes.append(args[0].numel())
        return func(*args, **(kwargs or {}))


def test_masked_entries_are_exact_zero_and_exp_never_sees_them():
    z = torch.tensor([[float("nan"), 0.3, float("inf")], [1e30, -0.2, float("-inf")]])
    mask = torch.tensor([[False, True, False], [False, True, False]])
    with _RecordExp() as rec:
        w = awr_weights(z, mask, beta=1.0, min_weight=0.1, max_weight=3.0)
    assert rec.sizes == [2]  # exp ran once, on the two valid entries only
    assert torch.equal(w[~mask], torch.zeros(4))
    torch.testing.assert_close(w[mask], torch.tensor([math.exp(0.3), math.exp(-0.2)]))


def test_all_masked_gives_zeros():
    w = awr_weights(
        torch.randn(2, 3),
        torch.zeros(2, 3, dtype=torch.bool),
        beta=1.0,
        min_weight=0.1,
        max_weight=3.0,
    )
    assert torch.equal(w, torch.zeros(2, 3))
