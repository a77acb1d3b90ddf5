import math

import pytest
import torch
import torch.nn.functional as F

from wmtp.losses.critic import (
    lambda_return_loss,
    lambda_return_targets,
    mean_response_score,
    pair_metrics,
    pairwise_loss,
)


def test_mean_response_score_ignores_prompt_and_padding():
    scores = torch.tensor([[9.0, 1.0, 2.0, float("nan")], [9.0, 9.0, 4.0, 6.0]])
    mask = torch.tensor([[False, True, True, False], [False, False, True, True]])
    torch.testing.assert_close(mean_response_score(scores, mask), torch.tensor([1.5, 5.0]))


def test_bradley_terry_and_hinge_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    # gaps = [1, -0.5]; margin 0.2 -> BT: -log sigmoid(0.8), -log sigmoid(-0.7)
    bt = pairwise_loss(chosen, rejected, kind="bradley_terry", margin=0.2)
    expected_bt = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(0.7))) / 2
    assert float(bt) == pytest.approx(expected_bt, rel=1e-6)
    # hinge: relu(0.2 - 1) = 0, relu(0.2 + 0.5) = 0.7 -> mean 0.35
    hinge = pairwise_loss(chosen, rejected, kind="hinge", margin=0.2)
    assert float(hinge) == pytest.approx(0.35, rel=1e-6)


def test_pairwise_gradient_pushes_correct_up_and_incorrect_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, rejected, kind="bradley_terry").backward()
    assert float(chosen.grad) == pytest.approx(-0.5) and float(rejected.grad) == pytest.approx(0.5)


def test_bradley_terry_is_finite_for_huge_gaps():
    loss = pairwise_loss(torch.tensor([-1e4]), torch.tensor([1e4]))
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(2e4)


def test_pair_metrics_add_up():
    a = pair_metrics(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0]))
    assert (a.n_pairs, a.n_correct_order, a.margin_sum) == (3.0, 1.0, 0.0)
    b = a + pair_metrics(torch.tensor([3.0]), torch.tensor([1.0]))
    assert b.accuracy == pytest.approx(0.5) and b.mean_margin == pytest.approx(0.5)


def test_lambda_return_targets_worked_example():
    # V = [0.5, 0.6, 0.7, 0.8], prompt = position 0, R = 1, gamma = 1, lam = 0.95:
    # advantages A = [_, 0.46575, 0.385, 0.3] (see tests/weighting/test_td.py).
    # target of V[t-1] is V[t-1] + A[t]: V[0] -> 0.5 + 0.46575 = 0.96575,
    # V[1] -> 0.6 + 0.385 = 0.985, V[2] -> 0.7 + 0.3 = 1.0; V[3] (after the last token) -> R = 1.
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8]])
    mask = torch.tensor([[False, True, True, True]])
    targets, where = lambda_return_targets(values, torch.tensor([1.0]), mask, gamma=1.0, lam=0.95)
    assert where.tolist() == [[True, True, True, True]]
    torch.testing.assert_close(targets, torch.tensor([[0.96575, 0.985, 1.0, 1.0]]))


def test_monte_carlo_targets_with_gamma_lam_one():
    values = torch.rand(3, 10)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 3:8] = True
    rewards = torch.tensor([1.0, 0.0, 1.0])
    targets, where = lambda_return_targets(values, rewards, mask, gamma=1.0, lam=1.0)
    assert where[:, 2:8].all() and not where[:, :2].any() and not where[:, 8:].any()
    torch.testing.assert_close(targets[where], rewards[:, None].expand(3, 6).reshape(-1))


def test_lambda_return_loss_is_huber_on_targets_and_ignores_padding():
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8, float("nan")]], requires_grad=True)
    mask = torch.tensor([[False, True, True, True, False]])
    loss = lambda_return_loss(
        values, torch.tensor([1.0]), mask, gamma=1.0, lam=0.95, huber_delta=1.0
    )
    targets = torch.tensor([0.96575, 0.985, 1.0, 1.0])
    expected = F.huber_loss(torch.tensor([0.5, 0.6, 0.7, 0.8]), targets)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(values.grad).all() and float(values.grad[0, 4]) == 0.0


def test_lambda_return_loss_without_response_is_zero():
    values = torch.rand(2, 3, requires_grad=True)
    loss = lambda_return_loss(values, torch.ones(2), torch.zeros(2, 3, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(values.grad, torch.zeros(2, 3))
