"""Temporal-difference errors and generalised advantage estimation over response tokens.

Conventions (../shared/DESIGN.md, "TD errors and GAE"): ``values[b, t]`` is the critic's value
*after* token t. Each row holds one prompt followed by one contiguous response (then padding);
``response_mask`` marks the response. For a response token t that is not the last,
``delta[t] = gamma * V[t] - V[t-1]``; for the last response token ``delta[T] = R - V[T-1]`` (the
terminal value is the reward, so no token loses its credit). ``V[t-1]`` of the first response token
is the value at the last prompt token. ``A[t] = delta[t] + gamma * lam * A[next response token]``.

Everything is computed in float32 (float64 for the discount powers) whatever the input dtype, and
values at positions that are neither a response token nor the last prompt token are never read:
NaN or Inf there changes nothing.
"""

from __future__ import annotations

import torch

_GAE_BLOCK = 64
"""Positions per block of the blocked GAE scan: S / 64 sequential steps, each a small matmul."""


def _check_response_mask(response_mask_BS: torch.Tensor) -> None:
    assert response_mask_BS.dtype == torch.bool, (
        f"response_mask must be bool, got {response_mask_BS.dtype}"
    )
    assert response_mask_BS.ndim == 2, (
        f"response_mask must be [batch, seq], got {tuple(response_mask_BS.shape)}"
    )
    if response_mask_BS.shape[1] == 0:
        return
    assert not bool(response_mask_BS[:, 0].any()), (
        "a response token at position 0 has no preceding (prompt) value; "
        f"rows {response_mask_BS[:, 0].nonzero().flatten().tolist()}"
    )
    # One contiguous run per row: at most one False -> True transition.
    starts_B = (response_mask_BS[:, 1:] & ~response_mask_BS[:, :-1]).sum(dim=1)
    assert bool((starts_B <= 1).all()), (
        f"each row must hold one contiguous response; runs per row: {starts_B.tolist()}"
    )


def last_response_token(response_mask_BS: torch.Tensor) -> torch.Tensor:
    """Bool [B, S]: True at the last response token of each row (no True in rows without one)."""
    # Counting response tokens from the right: the last one is where the reverse count is 1.
    from_right_BS = response_mask_BS.flip(1).long().cumsum(1).flip(1)
    return response_mask_BS & (from_right_BS == 1)


def td_errors(
    values: torch.Tensor,
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    gamma: float,
) -> torch.Tensor:
    """TD errors [B, S] (float32) of the response tokens; 0 outside the response.

    ``values`` [B, S]: value after each token; ``rewards`` [B]: one reward per sequence;
    ``response_mask`` [B, S] bool, one contiguous response per row, never at position 0.
    """
    _check_response_mask(response_mask)
    assert values.shape == response_mask.shape, (
        f"values {tuple(values.shape)} vs mask {tuple(response_mask.shape)}"
    )
    assert rewards.shape == (values.shape[0],), (
        f"rewards {tuple(rewards.shape)} vs batch {values.shape[0]}"
    )
    v_BS = values.float()
    # V[t-1] at every position (position 0 has no predecessor and is never a response token).
    v_prev_BS = torch.cat([torch.zeros_like(v_BS[:, :1]), v_BS[:, :-1]], dim=1)
    is_last_BS = last_response_token(response_mask)
    # where(), not arithmetic with the mask, so NaN/Inf at unread positions cannot leak.
    target_BS = torch.where(is_last_BS, rewards.float()[:, None], gamma * v_BS)
    delta_BS = target_BS - v_prev_BS
    return torch.where(response_mask, delta_BS, torch.zeros_like(delta_BS))


def gae(
    deltas: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Advantages [B, S] (float32): ``A[t] = delta[t] + gamma*lam*A[next response token]``; 0 outside.

    Vectorised as a blocked scan: within a block of 64 positions the discounted sums are one
    matrix product; blocks are chained right to left (S / 64 steps).
    """
    assert deltas.shape == response_mask.shape, (
        f"deltas {tuple(deltas.shape)} vs mask {tuple(response_mask.shape)}"
    )
    assert response_mask.dtype == torch.bool, (
        f"response_mask must be bool, got {response_mask.dtype}"
    )
    discount = float(gamma) * float(lam)
    assert discount >= 0.0, f"gamma * lam must be >= 0, got gamma={gamma} lam={lam}"
    B, S = deltas.shape
    if S == 0:
        return deltas.float().clone()
    L = _GAE_BLOCK
    n_blocks = -(-S // L)
    pad = n_blocks * L - S
    delta_BS = torch.where(
        response_mask, deltas.float(), torch.zeros_like(deltas, dtype=torch.float32)
    )
    delta_BNL = torch.nn.functional.pad(delta_BS, (0, pad)).view(B, n_blocks, L)
    mask_BNL = torch.nn.functional.pad(response_mask, (0, pad)).view(B, n_blocks, L)

    # Response tokens strictly before each position within its block: n_before[t].
    count_BNL = mask_BNL.long().cumsum(-1)
    before_BNL = count_BNL - mask_BNL.long()
    # decay[t, u] = discount ** (response tokens in [t, u)) for u >= t (the carry passes through
    # non-response positions undiscounted); 0 for u < t.
    steps_BNLL = before_BNL[..., None, :] - before_BNL[..., :, None]  # [B, N, t, u]
    upper_LL = torch.ones(L, L, dtype=torch.bool, device=deltas.device).triu()
    decay_BNLL = torch.where(
        upper_LL,
        torch.pow(
            torch.tensor(discount, dtype=torch.float64, device=deltas.device),
            steps_BNLL.clamp_min(0),
        ),
        torch.zeros((), dtype=torch.float64, device=deltas.device),
    )
    local_BNL = torch.einsum("bntu,bnu->bnt", decay_BNLL, delta_BNL.double())
    # Discount from t to the start of the next block: response tokens in [t, block end].
    to_next_BNL = torch.pow(
        torch.tensor(discount, dtype=torch.float64, device=deltas.device),
        count_BNL[..., -1:] - before_BNL,
    )
    carry_B = torch.zeros(B, dtype=torch.float64, device=deltas.device)
    blocks = []
    for n in reversed(range(n_blocks)):
        block_BL = local_BNL[:, n] + to_next_BNL[:, n] * carry_B[:, None]
        carry_B = block_BL[:, 0]
        blocks.append(block_BL)
    adv_BS = torch.cat(blocks[::-1], dim=1)[:, :S].float()
    return torch.where(response_mask, adv_BS, torch.zeros_like(adv_BS))
