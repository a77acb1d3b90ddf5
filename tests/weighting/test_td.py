import pytest
import torch

from tests.weighting.weighting_reference import gae_ref, random_rows, td_errors_ref
from wmtp.weighting import gae, td_errors
from wmtp.weighting.td import last_response_token


def test_worked_example():
    # V = [0.5, 0.6, 0.7, 0.8], position 0 is the prompt, R = 1, gamma = 1, lam = 0.95.
    # delta[1] = gamma*V[1] - V[0] = 0.6 - 0.5 = 0.1
    # delta[2] = gamma*V[2] - V[1] = 0.7 - 0.6 = 0.1
    # delta[3] = R - V[2]          = 1.0 - 0.7 = 0.3   (last token: the terminal value is R;
    #                                                  V[3] = 0.8 is never read)
    # A[3] = 0.3
    # A[2] = 0.1 + 0.95 * 0.3     = 0.385
    # A[1] = 0.1 + 0.95 * 0.385   = 0.1 + 0.36575 = 0.46575
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8]])
    mask = torch.tensor([[False, True, True, True]])
    deltas = td_errors(values, torch.tensor([1.0]), mask, gamma=1.0)
    torch.testing.assert_close(deltas, torch.tensor([[0.0, 0.1, 0.1, 0.3]]))
    adv = gae(deltas, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.46575, 0.385, 0.3]]))


def test_worked_example_with_discount_and_padding():
    # gamma = 0.9, lam = 0.5, R = 0, two prompt tokens, two padding positions.
    # delta[2] = 0.9*0.4 - 0.2 = 0.16; delta[3] = 0 - 0.4 = -0.4
    # A[3] = -0.4; A[2] = 0.16 + 0.45 * (-0.4) = -0.02
    values = torch.tensor([[0.1, 0.2, 0.4, 0.3, 9.0, 9.0]])
    mask = torch.tensor([[False, False, True, True, False, False]])
    deltas = td_errors(values, torch.tensor([0.0]), mask, gamma=0.9)
    torch.testing.assert_close(deltas, torch.tensor([[0.0, 0.0, 0.16, -0.4, 0.0, 0.0]]))
    adv = gae(deltas, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, -0.02, -0.4, 0.0, 0.0]]))


def test_gamma_lam_one_gives_reward_minus_previous_value(gen):
    values, rewards, mask = random_rows(gen, 6, 150)
    adv = gae(td_errors(values, rewards, mask, gamma=1.0), mask, gamma=1.0, lam=1.0)
    prev = torch.cat([torch.zeros(6, 1), values[:, :-1]], dim=1)
    expected = torch.where(mask, rewards[:, None] - prev, torch.zeros(()))
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)


def test_sum_of_deltas_telescopes_to_reward_minus_prompt_end_value(gen):
    values, rewards, mask = random_rows(gen, 8, 40, allow_empty=False)
    deltas = td_errors(values, rewards, mask, gamma=1.0)
    prompt_end = mask.float().argmax(dim=1) - 1
    v_prompt_end = values.gather(1, prompt_end[:, None]).squeeze(1)
    torch.testing.assert_close(deltas.sum(dim=1), rewards - v_prompt_end, atol=1e-5, rtol=1e-5)


def test_values_outside_the_read_positions_never_change_anything(gen):
    values, rewards, mask = random_rows(gen, 5, 30)
    deltas = td_errors(values, rewards, mask, gamma=0.97)
    adv = gae(deltas, mask, gamma=0.97, lam=0.9)
    assert not deltas.isnan().any() and not adv.isnan().any()
    # Read positions: the response tokens but the last, and the token before the response.
    read = mask & ~last_response_token(mask)
    read[:, :-1] |= mask[:, 1:] & ~mask[:, :-1]
    noisy = torch.where(read, values, torch.full_like(values, float("inf")))
    deltas2 = td_errors(noisy, rewards, mask, gamma=0.97)
    assert torch.equal(deltas, deltas2)
    assert torch.equal(adv, gae(deltas2, mask, gamma=0.97, lam=0.9))


@pytest.mark.parametrize("seq", [1, 7, 64, 65, 200])
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0), (1.0, 1.0)])
def test_vectorised_matches_slow_reference(gen, seq, gamma, lam):
    values, rewards, mask = random_rows(gen, 4, seq)
    deltas = td_errors(values, rewards, mask, gamma=gamma)
    adv = gae(deltas, mask, gamma=gamma, lam=lam)
    for b in range(4):
        row_mask = mask[b].tolist()
        d_ref = td_errors_ref(values[b].tolist(), float(rewards[b]), row_mask, gamma)
        a_ref = gae_ref(d_ref, row_mask, gamma, lam)
        torch.testing.assert_close(deltas[b], torch.tensor(d_ref), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adv[b], torch.tensor(a_ref), atol=1e-5, rtol=1e-5)


def test_gae_carries_across_gaps_in_the_mask():
    # GAE alone accepts any mask: the next response token may lie beyond masked positions.
    deltas = torch.tensor([[1.0, 5.0, 2.0, 5.0, 5.0, 4.0]])
    mask = torch.tensor([[True, False, True, False, False, True]])
    adv = gae(deltas, mask, gamma=1.0, lam=0.5)
    ref = gae_ref(deltas[0].tolist(), mask[0].tolist(), 1.0, 0.5)
    torch.testing.assert_close(adv[0], torch.tensor(ref))
    assert ref == [1.0 + 0.5 * 4.0, 0.0, 4.0, 0.0, 0.0, 4.0]


def test_single_response_token_and_empty_rows():
    values = torch.tensor([[0.2, 0.7, float("nan")], [0.3, float("nan"), float("nan")]])
    mask = torch.tensor([[False, True, False], [False, False, False]])
    deltas = td_errors(values, torch.tensor([1.0, 1.0]), mask, gamma=1.0)
    torch.testing.assert_close(deltas, torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, 0.0]]))
    adv = gae(deltas, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, deltas)


def test_bfloat16_values_compute_in_float32():
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8]], dtype=torch.bfloat16)
    mask = torch.tensor([[False, True, True, True]])
    deltas = td_errors(values, torch.tensor([1.0]), mask, gamma=1.0)
    assert deltas.dtype == torch.float32
    assert gae(deltas, mask, gamma=1.0, lam=0.95).dtype == torch.float32


def test_rejects_response_at_position_zero_and_split_responses():
    with pytest.raises(AssertionError, match="position 0"):
        td_errors(torch.zeros(1, 3), torch.ones(1), torch.tensor([[True, True, False]]), gamma=1.0)
    with pytest.raises(AssertionError, match="contiguous"):
        td_errors(
            torch.zeros(1, 4), torch.ones(1), torch.tensor([[False, True, False, True]]), gamma=1.0
        )


# Two episodes of one batch, gamma = 1 (DESIGN.md "TD errors and GAE"), padding values 5.0 unread.
# Row 0: prompt V[0] = 0.2; response 1..3 with V = 0.5, 0.4, (0.9 unread); R = 1.
#   delta = [0.5 - 0.2, 0.4 - 0.5, R - 0.4] = [0.3, -0.1, 0.6]
# Row 1: prompt V[0..1] = 0.1, 0.3; response 2..3 with V = 0.6, (0.7 unread); R = 0.
#   delta = [0.6 - 0.3, 0 - 0.6] = [0.3, -0.6]
_EPISODE_VALUES = [[0.2, 0.5, 0.4, 0.9, 5.0], [0.1, 0.3, 0.6, 0.7, 5.0]]
_EPISODE_MASK = [[False, True, True, True, False], [False, False, True, True, False]]
_EPISODE_ADVANTAGES = {
    0.0: [[0, 0.3, -0.1, 0.6, 0], [0, 0, 0.3, -0.6, 0]],  # A = delta
    # A[3] = 0.6, A[2] = -0.1 + 0.95 * 0.6 = 0.47, A[1] = 0.3 + 0.95 * 0.47 = 0.7465;
    # row 1: A[3] = -0.6, A[2] = 0.3 + 0.95 * -0.6 = -0.27
    0.95: [[0, 0.7465, 0.47, 0.6, 0], [0, 0, -0.27, -0.6, 0]],
    1.0: [[0, 0.8, 0.5, 0.6, 0], [0, 0, -0.3, -0.6, 0]],  # A[t] = R - V[t-1]
}


@pytest.mark.parametrize("lam", sorted(_EPISODE_ADVANTAGES))
def test_worked_episodes_with_gamma_one(lam):
    values, mask = torch.tensor(_EPISODE_VALUES), torch.tensor(_EPISODE_MASK)
    deltas = td_errors(values, torch.tensor([1.0, 0.0]), mask, gamma=1.0)
    want_deltas = torch.tensor(_EPISODE_ADVANTAGES[0.0])
    torch.testing.assert_close(deltas, want_deltas)
    adv = gae(deltas, mask, gamma=1.0, lam=lam)
    torch.testing.assert_close(adv, torch.tensor(_EPISODE_ADVANTAGES[lam]))


def test_the_reward_enters_at_the_last_response_token_only():
    values, mask = torch.tensor(_EPISODE_VALUES), torch.tensor(_EPISODE_MASK)
    low = td_errors(values, torch.tensor([1.0, 0.0]), mask, gamma=1.0)
    high = td_errors(values, torch.tensor([3.0, 0.5]), mask, gamma=1.0)
    changed = (high - low) != 0
    torch.testing.assert_close(changed, last_response_token(mask))
    torch.testing.assert_close((high - low)[changed], torch.tensor([2.0, 0.5]))
