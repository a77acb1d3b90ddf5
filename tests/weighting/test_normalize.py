import pytest
import torch

from wmtp.weighting import BatchWhitener, EMAWhitener, whiten
from wmtp.weighting.normalize import masked_moments

from .weighting_reference import random_rows, whiten_ref


def test_whiten_matches_reference_and_ignores_masked_entries(gen):
    values, _, mask = random_rows(gen, 5, 40)  # NaN at padding
    z = whiten(values, mask)
    ref = whiten_ref(values.flatten().tolist(), mask.flatten().tolist())
    torch.testing.assert_close(z.flatten(), torch.tensor(ref), atol=1e-5, rtol=1e-5)
    assert torch.all(z[~mask] == 0)
    assert abs(float(z[mask].mean())) < 1e-5
    assert abs(float(z[mask].std()) - 1.0) < 1e-4  # unbiased std of the result is 1


def test_whiten_one_valid_entry_is_zero_not_nan():
    x = torch.tensor([[3.0, float("nan"), 7.0]])
    z = whiten(x, torch.tensor([[True, False, False]]))
    assert torch.equal(z, torch.zeros(1, 3))


def test_whiten_no_valid_entry_and_constant_input():
    x = torch.tensor([[1.0, 2.0]])
    assert torch.equal(whiten(x, torch.zeros(1, 2, dtype=torch.bool)), torch.zeros(1, 2))
    const = torch.full((2, 3), 0.1)
    assert torch.equal(whiten(const, torch.ones(2, 3, dtype=torch.bool)), torch.zeros(2, 3))


def test_batch_whitener_equals_whiten_in_one_process(gen):
    values, _, mask = random_rows(gen, 3, 20)
    assert torch.equal(BatchWhitener()(values, mask), whiten(values, mask))


def test_ema_whitener_warmup_then_moving_average():
    ema = EMAWhitener(momentum=0.25, warmup_steps=2)
    ones = torch.ones(1, 4, dtype=torch.bool)
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # mean 1.5, var 5/3
    b = torch.tensor([[4.0, 5.0, 6.0, 7.0]])  # mean 5.5, var 5/3
    # Warm-up: the batch's own statistics whiten it.
    torch.testing.assert_close(ema(a, ones), whiten(a, ones))
    assert (ema.mean, ema.var) == pytest.approx((1.5, 5 / 3))
    torch.testing.assert_close(ema(b, ones), whiten(b, ones))
    # Second update moves by max(0.25, 1/2) = 0.5: an average of the two batches.
    assert (ema.mean, ema.var) == pytest.approx((3.5, 5 / 3))
    # After warm-up: rate max(0.25, 1/3) = 1/3, and the averages whiten the batch.
    out = ema(a, ones)
    mean, var = 3.5 * 2 / 3 + 1.5 / 3, 5 / 3
    assert (ema.mean, ema.var) == pytest.approx((mean, var))
    torch.testing.assert_close(out, (a - mean) / (var + 1e-8) ** 0.5)
    # The rate settles at the momentum.
    for _ in range(3):
        ema(b, ones)
    assert ema.updates == 6
    before = ema.mean
    ema(a, ones)
    assert ema.mean == pytest.approx(0.75 * before + 0.25 * 1.5)


def test_ema_whitener_skips_empty_batches_and_round_trips_state():
    ema = EMAWhitener(momentum=0.1, warmup_steps=0)
    x = torch.tensor([[1.0, 2.0, 4.0]])
    out = ema(x, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(1, 3)) and ema.updates == 0
    ema(x, torch.ones(1, 3, dtype=torch.bool))
    restored = EMAWhitener(momentum=0.1, warmup_steps=0)
    restored.load_state_dict(ema.state_dict())
    assert restored.state_dict() == ema.state_dict()


def test_moments_of_single_entry_have_zero_variance():
    m = masked_moments(torch.tensor([[5.0, 1.0]]), torch.tensor([[True, False]]))
    assert (m.count, m.mean, m.var) == (1.0, 5.0, 0.0)
