"""The weighted pipelines' steps on tiny real models: Rho-1 selection, critic TD weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from wmtp.errors import CheckpointError, DataError
from wmtp.losses.mtp import MTPLossConfig, loss_and_backward
from wmtp.models.args import ModelArgs
from wmtp.models.llama_mtp import LlamaMTP
from wmtp.train.figures import read_figures
from wmtp.train.pipelines.rho1 import Rho1HeadWeights, kept_per_head, reference_ce_by_head
from wmtp.train.pipelines.verifiable import loss_figures, response_mask_of, rewards_of
from wmtp.weighting.weightings import Rho1Selection

VOCAB = 50


def _model(n_heads: int, seed: int) -> LlamaMTP:
    torch.manual_seed(seed)
    args = ModelArgs(
        dim=32,
        n_layers=2 + n_heads,
        n_heads=4,
        vocab_size=VOCAB,
        n_future_tokens=n_heads,
        max_seq_len=64,
    )
    return LlamaMTP(args, attention="eager").float()


def _batch(seed: int = 0, B: int = 3, S: int = 12):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    labels = input_ids.clone()
    labels[:, :3] = -100  # prompt
    labels[1, 9:] = -100  # padding
    return input_ids, labels


def _per_head_ce(model, input_ids, labels, k):
    """Independent reference: full logits of head k, F.cross_entropy per target."""
    with torch.no_grad():
        logits = model(input_ids, heads=[k])[:, :, 0]  # [B, S, V]
    S = input_ids.shape[1]
    targets = labels[:, k:]
    ce = F.cross_entropy(
        logits[:, : S - k].reshape(-1, VOCAB), targets.reshape(-1).clamp_min(0), reduction="none"
    )
    return torch.where(targets != -100, ce.view_as(targets), torch.zeros(()))


@pytest.mark.parametrize("ref_heads", [1, 2])
def test_reference_ce_matches_full_logits(ref_heads):
    reference = _model(ref_heads, seed=1)
    input_ids, labels = _batch()
    ce_K = reference_ce_by_head(reference, input_ids, labels, n_heads=2, chunk_size=7)
    for k in (1, 2):
        # A one-head reference scores target t+k with its next-token loss at t+k-1.
        expected = _per_head_ce(reference, input_ids, labels, k if ref_heads == 2 else 1)
        if ref_heads == 1:
            expected = expected[:, k - 1 :]
        torch.testing.assert_close(ce_K[k - 1], expected, atol=1e-5, rtol=1e-5)


def test_reference_with_another_head_count_is_an_error():
    with pytest.raises(CheckpointError, match="heads"):
        reference_ce_by_head(_model(2, seed=1), *_batch(), n_heads=3)


def test_rho1_loss_is_the_mean_ce_of_the_kept_tokens():
    policy, reference = _model(2, seed=0), _model(2, seed=1)
    input_ids, labels = _batch()
    ref_K = reference_ce_by_head(reference, input_ids, labels, n_heads=2)
    fn = Rho1HeadWeights(Rho1Selection(k_percent=0.3), ref_K)
    denominators = kept_per_head(labels, 2, 0.3)
    stats = loss_and_backward(
        policy,
        input_ids,
        labels,
        n_heads=2,
        weights=fn,
        denominators_K=denominators,
        config=MTPLossConfig(strategy="joint"),
    )
    for k in (1, 2):
        ce = _per_head_ce(policy, input_ids, labels, k)
        valid = labels[:, k:] != -100
        excess = (ce - ref_K[k - 1])[valid]
        n_keep = math.ceil(0.3 * int(valid.sum()))
        expected = ce[valid][excess.argsort(descending=True)[:n_keep]].mean()
        assert float(stats.weight_sum_K[k - 1]) == n_keep == float(denominators[k - 1])  # 0/1
        torch.testing.assert_close(stats.head_losses()[k - 1], expected, atol=1e-5, rtol=1e-5)
    assert policy.output.weight.grad is not None


def test_rewards_and_response_mask_from_a_batch():
    input_ids, labels = _batch()
    batch = {"input_ids": input_ids, "labels": labels, "is_correct": [True, False, True]}
    assert rewards_of(batch).tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(response_mask_of(batch), labels != -100)
    with pytest.raises(DataError, match="is_correct"):
        rewards_of({"input_ids": input_ids, "labels": labels})
    packed = {**batch, "example_of_document": torch.tensor([0, -1, 1])}  # 2 examples, 1 padding
    with pytest.raises(DataError, match="each of the 2 sequences"):
        rewards_of(packed)
    assert rewards_of({**packed, "is_correct": [False, True]}).tolist() == [0.0, 1.0]


def test_weighted_to_unweighted_ratio():
    from wmtp.losses.mtp import MTPStats

    stats = MTPStats(
        weighted_ce_K=torch.tensor([4.0, 9.0]),
        weight_sum_K=torch.tensor([2.0, 3.0]),  # weighted losses 2, 3
        ce_sum_K=torch.tensor([10.0, 20.0]),
        n_tokens_K=torch.tensor([5.0, 5.0]),  # unweighted 2, 4
        n_correct_K=torch.tensor([0.0, 0.0]),
    )
    figures = read_figures(loss_figures(stats))
    assert figures["loss/head2_weighted"] == 3.0 and figures["loss/head2_unweighted"] == 4.0
    assert figures["loss/weighted_to_unweighted"] == pytest.approx(2.5 / 3.0)
    empty = MTPStats(*(torch.zeros(2) for _ in range(5)))  # no target: a ratio of 0, not NaN
    assert read_figures(loss_figures(empty))["loss/weighted_to_unweighted"] == 0.0


# --- critic -------------------------------------------------------------------------------------


def _pairs(seed: int, P: int = 4, S: int = 10) -> dict:
    """Correct solutions use tokens 10..19, incorrect ones 20..29; prompt 3 tokens, ragged ends."""
    gen = torch.Generator().manual_seed(seed)

    def half(low):
        ids = torch.randint(0, 10, (P, S), generator=gen)
        ids[:, 3:] = torch.randint(low, low + 10, (P, S - 3), generator=gen)
        labels = ids.clone()
        labels[:, :3] = -100
        labels[0, 7:] = -100  # a shorter solution (padding)
        return {"input_ids": ids, "labels": labels}

    return {"chosen": half(10), "rejected": half(20)}


def _value_model(head="linear"):
    from wmtp.models.value import ValueModel

    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    return ValueModel(args, head=head, attention="eager").float()


@pytest.mark.parametrize("head", ["linear", "sigmoid"])
def test_critic_pair_loss_by_hand(head):
    from wmtp.recipe.schema import CriticLossSpec
    from wmtp.train.pipelines.critic import pair_loss

    model = _value_model(head)
    pair = _pairs(0)
    spec = CriticLossSpec(pairwise="hinge", margin=0.5, lambda_return_weight=0.3, lam=0.9)
    loss, parts = pair_loss(model, pair, spec)
    with torch.no_grad():
        rows = []
        for half in ("chosen", "rejected"):
            scores = model.scores(pair[half]["input_ids"])
            mask = pair[half]["labels"] != -100
            rows.append(torch.stack([scores[b][mask[b]].mean() for b in range(4)]))
        hinge = torch.relu(0.5 - (rows[0] - rows[1])).mean()
    torch.testing.assert_close(parts["pairwise"], hinge)
    # Total = pairwise + 0.3 * lambda-return (Huber on values, sigmoid applied for that head).
    torch.testing.assert_close(loss.detach(), hinge + 0.3 * parts["lambda_return"])
    assert float(parts["lambda_return"]) > 0
    if head == "sigmoid":
        assert float(parts["values_chosen"].min()) > 0 and float(parts["values_chosen"].max()) < 1


def test_critic_learns_to_rank_pairs_and_reports_heldout_accuracy():
    from wmtp.recipe.schema import CriticLossSpec
    from wmtp.train.pipelines.critic import evaluate_pairs, pair_figures, pair_loss

    model = _value_model("mlp")
    spec = CriticLossSpec(lambda_return_weight=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    heldout = [_pairs(1000 + i) for i in range(2)]
    before = evaluate_pairs(model, heldout, spec)
    for step in range(40):
        loss, parts = pair_loss(model, _pairs(step), spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = pair_figures([parts], "train")
    after = evaluate_pairs(model, heldout, spec)
    assert after["heldout/pair_accuracy"] == 1.0
    assert after["heldout/pair_margin"] > max(before["heldout/pair_margin"], 0.0)
    assert train["train/pair_accuracy"] == 1.0
    assert after["heldout/value_chosen_mean"] > after["heldout/value_rejected_mean"]
    assert model.training  # evaluation restores training mode


def test_critic_pair_without_response_is_a_data_error():
    from wmtp.recipe.schema import CriticLossSpec
    from wmtp.train.pipelines.critic import pair_loss

    pair = _pairs(0)
    pair["rejected"]["labels"][2] = -100
    pair["chosen"]["problem_id"] = pair["rejected"]["problem_id"] = ["a", "b", "c", "d"]
    with pytest.raises(DataError, match="'c'"):
        pair_loss(_value_model(), pair, CriticLossSpec())


def test_a_packed_batch_gets_the_weights_of_the_same_examples_padded():
    """The critic scores a packed row within its documents and TD/GAE runs per example: the
    weights of each example equal those it gets in a padded batch (one sequence per row)."""
    from wmtp import registry
    from wmtp.data.collate import pack_batch, pack_rows, pad_batch
    from wmtp.data.examples import Encoded
    from wmtp.models.seq import SeqInfo
    from wmtp.recipe.schema import TDWeightingSpec
    from wmtp.train.pipelines.verifiable import step_token_weights

    gen = torch.Generator().manual_seed(3)
    examples = []
    for i, (n_prompt, n_response) in enumerate([(3, 4), (2, 3), (4, 5), (2, 2), (3, 6)]):
        ids = torch.randint(1, VOCAB, (n_prompt + n_response,), generator=gen).tolist()
        labels = [-100] * n_prompt + ids[n_prompt:]
        examples.append(Encoded(ids, labels, problem_id=f"p{i}", is_correct=i % 2 == 0))
    critic = _value_model()
    padded = pad_batch(examples, pad_id=0)
    packed = pack_batch(pack_rows(examples, 16), pad_id=0, row_length=16)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples share a row

    def weights(batch, seq=None):
        td = registry.get("weighting", "td")(TDWeightingSpec())  # fresh EMA statistics each
        return step_token_weights(critic, td, [batch], [seq])

    (w_padded,), figures_padded = weights(padded)
    (w_packed,), figures_packed = weights(packed, SeqInfo.from_batch(packed))
    flat = w_packed.reshape(-1)
    starts = packed["cu_seqlens"][:-1][packed["example_of_document"] >= 0]
    for i, e in enumerate(examples):
        start = int(starts[i])
        torch.testing.assert_close(flat[start : start + len(e)], w_padded[i, : len(e)])
    assert float(w_packed[packed["labels"] == -100].abs().sum()) == 0.0  # prompts and padding
    packed_mean, padded_mean = (float(f["value/mean"]) for f in (figures_packed, figures_padded))
    assert packed_mean == pytest.approx(padded_mean, rel=1e-5)
