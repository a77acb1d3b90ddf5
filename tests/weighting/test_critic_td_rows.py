"""TD errors and GAE (DESIGN.md "TD errors and GAE") on rows as training collates them: the
response is the learned labels (the solution, then EOS), so the reward enters at EOS, and the
first response token's TD error reads the value at the last prompt token. Worked by hand with
values V[t] = t / 100 (so V[t] - V[t-1] = 0.01 inside a response), gamma = 1."""

import pytest
import torch

from wmtp.data.collate import pad_batch
from wmtp.data.examples import Example, encode_example
from wmtp.data.tokenizers import ByteTokenizer
from wmtp.recipe.specs.weighting import TDWeightingSpec
from wmtp.weighting.weightings import TDWeighting

STEP = 0.01


def _rows():
    """A correct and an incorrect solution, padded to one length; labels as training has them."""
    tok = ByteTokenizer()
    examples = [
        Example("Add.", "return a + b", "p0", True),
        Example("Add.", "return a", "p0", False),
    ]
    encoded = [encode_example(e, tok, template="alpaca") for e in examples]
    batch = pad_batch(encoded, tok.pad_id)
    return batch, tok


def _by_hand(first: int, eos: int, reward: float, lam: float) -> dict[int, float]:
    """A[t] for the response t = first..eos with V[t] = t / 100 and gamma = 1:
    delta[t] = 0.01 for t < eos, delta[eos] = R - V[eos - 1]; A[t] = delta[t] + lam A[t + 1]."""
    last = reward - (eos - 1) * STEP
    out = {}
    for t in range(first, eos + 1):
        m = eos - t  # response tokens after t
        inner = STEP * m if lam == 1.0 else STEP * (1 - lam**m) / (1 - lam)
        out[t] = inner + lam**m * last
    return out


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_advantages_of_collated_rows_with_the_reward_at_eos(lam):
    batch, tok = _rows()
    labels = batch["labels"]
    mask = labels != -100
    B, S = labels.shape
    values = torch.arange(S, dtype=torch.float32).expand(B, S) * STEP
    values = torch.where(batch["attention_mask"], values, torch.nan)  # padding is never read
    weighting = TDWeighting(TDWeightingSpec(gamma=1.0, lam=lam))
    rewards = torch.tensor([1.0 if ok else 0.0 for ok in batch["is_correct"]])
    adv = weighting.advantages(values, rewards, mask)
    for row in range(B):
        learned = mask[row].nonzero().flatten().tolist()
        first, eos = learned[0], learned[-1]
        assert batch["input_ids"][row, eos] == tok.eos_id  # the last response token is EOS
        assert tok.decode(batch["input_ids"][row, first:eos].tolist()) == (
            "return a + b" if row == 0 else "return a"
        )
        want = _by_hand(first, eos, float(rewards[row]), lam)
        got = {t: float(adv[row, t]) for t in learned}
        assert got == pytest.approx(want, abs=1e-6)
        assert not adv[row, ~mask[row]].any()  # prompt and padding: no advantage
    if lam == 1.0:  # A[t] = R - V[t-1]: the first response token reads the last prompt value
        first = int(mask[0].nonzero()[0])
        assert float(adv[0, first]) == pytest.approx(1.0 - (first - 1) * STEP, abs=1e-6)
