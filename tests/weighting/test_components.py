import math

import pytest
import torch

from wmtp import registry
from wmtp.recipe.specs.weighting import (
    BatchNormalizeSpec,
    Rho1WeightingSpec,
    ShuffledWeightingSpec,
    TDWeightingSpec,
    UniformWeightingSpec,
)
from wmtp.weighting import awr_weights, gae, td_errors, whiten

from .weighting_reference import random_rows


def test_every_kind_is_registered():
    names = [e.name for e in registry.entries("weighting")]
    assert names == ["random_matched", "rho1", "shuffled", "td", "uniform"]


def test_td_weighting_composes_the_primitives(gen):
    spec = TDWeightingSpec(
        gamma=0.99,
        lam=0.9,
        beta=0.5,
        min_weight=0.2,
        max_weight=2.5,
        normalize=BatchNormalizeSpec(),
    )
    weighting = registry.get("weighting", "td")(spec)
    values, rewards, mask = random_rows(gen, 4, 20)
    w, figures = weighting(values, rewards, mask)
    adv = gae(td_errors(values, rewards, mask, gamma=0.99), mask, gamma=0.99, lam=0.9)
    expected = awr_weights(whiten(adv, mask), mask, beta=0.5, min_weight=0.2, max_weight=2.5)
    torch.testing.assert_close(w, expected)
    valid = w[mask]
    assert figures["weight/mean"] == pytest.approx(float(valid.mean()), rel=1e-5)
    assert figures["weight/std"] == pytest.approx(float(valid.std()), rel=1e-4)
    assert figures["weight/min"] == pytest.approx(float(valid.min()))
    assert figures["weight/max"] == pytest.approx(float(valid.max()))
    at_min = float((valid <= 0.2 + 1e-6).float().mean())
    at_max = float((valid >= 2.5 - 1e-5).float().mean())
    assert figures["weight/clipped_min"] == pytest.approx(at_min)
    assert figures["weight/clipped_max"] == pytest.approx(at_max)
    assert 0 < at_min < 1 and 0 < at_max < 1  # the example exercises both bounds


def test_td_weighting_of_a_single_valid_token_is_weight_one():
    # One valid token whitens to z = 0, so its weight is exp(0) = 1; never NaN.
    weighting = registry.get("weighting", "td")(TDWeightingSpec(normalize=BatchNormalizeSpec()))
    mask = torch.tensor([[False, True, False]])
    w, figures = weighting(torch.tensor([[0.3, 0.4, float("nan")]]), torch.tensor([1.0]), mask)
    assert w.tolist() == [[0.0, 1.0, 0.0]]
    assert not any(math.isnan(v) for v in figures.values())


def test_td_weighting_of_an_all_masked_batch_is_zero_and_finite():
    weighting = registry.get("weighting", "td")(TDWeightingSpec())  # EMA normalisation
    w, figures = weighting(torch.rand(2, 5), torch.ones(2), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(w, torch.zeros(2, 5))
    assert all(math.isfinite(v) for v in figures.values())
    assert weighting.whitener.updates == 0  # an empty batch does not move the averages


def test_shuffled_control_keeps_the_weights_and_moves_them(gen):
    values, rewards, mask = random_rows(gen, 4, 30, allow_empty=False)
    td = registry.get("weighting", "td")(TDWeightingSpec(normalize=BatchNormalizeSpec()))
    control = registry.get("weighting", "shuffled")(
        ShuffledWeightingSpec(normalize=BatchNormalizeSpec())
    )
    control.seed(0)
    w_td, _ = td(values, rewards, mask)
    w_sh, _ = control(values, rewards, mask)
    assert torch.equal(w_sh[mask].sort().values, w_td[mask].sort().values)
    assert not torch.equal(w_sh, w_td)
    assert torch.equal(w_sh[~mask], torch.zeros(int((~mask).sum())))


def test_control_state_round_trips():
    spec = ShuffledWeightingSpec()
    a = registry.get("weighting", "shuffled")(spec)
    a.seed(3)
    values, mask = torch.rand(2, 8), torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 2:6] = True
    a(values, torch.ones(2), mask)
    b = registry.get("weighting", "shuffled")(spec)
    b.seed(99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(values, torch.ones(2), mask)[0], b(values, torch.ones(2), mask)[0])


def test_uniform_and_rho1():
    mask = torch.tensor([[False, True, True]])
    assert registry.get("weighting", "uniform")(UniformWeightingSpec())(mask).tolist() == [
        [0.0, 1.0, 1.0]
    ]
    rho1 = registry.get("weighting", "rho1")(Rho1WeightingSpec(k_percent=0.5))
    keep = rho1(torch.tensor([[5.0, 1.0, 2.0]]), mask)
    assert keep.tolist() == [[0.0, 0.0, 1.0]]
