"""The MTP loss against an independent all-heads reference on a small stand-in model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wmtp.losses import MTPLossConfig, MTPStats, loss_and_backward, weight_sums
from wmtp.losses.mtp import linear_cross_entropy

V, D, N_HEADS = 97, 16, 3


class StandIn(nn.Module):
    """A trunk (embedding + MLP), n head MLPs, a shared norm and unembedding: LlamaMTP's surface."""

    def __init__(self, n_heads: int = N_HEADS) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(V, D)
        self.body = nn.Sequential(nn.Linear(D, D), nn.Tanh())
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(D, D), nn.GELU()) for _ in range(n_heads)
        )
        self.norm = nn.LayerNorm(D)
        self.output = nn.Linear(D, V, bias=False)

    def trunk(self, tokens_BS, seq=None):
        return self.body(self.tok_embeddings(tokens_BS))

    def head_hidden(self, h_BSD, k, seq=None):
        return self.norm(self.heads[k - 1](h_BSD))

    def all_logits(self, tokens_BS):
        h = self.trunk(tokens_BS)
        return torch.stack(
            [self.output(self.head_hidden(h, k)) for k in range(1, len(self.heads) + 1)], 2
        )


def reference_loss(model, tokens_BS, labels_BS, w_BS, depth=None):
    """Materialise [B, S, n, V] and apply DESIGN's formula literally, head by head."""
    logits_BSKV = model.all_logits(tokens_BS)
    n = logits_BSKV.shape[2]
    d = torch.ones(n) if depth is None else torch.tensor(depth)
    d = d / d.sum()
    total = 0.0
    for k in range(1, n + 1):
        S = tokens_BS.shape[1]
        logits = logits_BSKV[:, : S - k, k - 1]
        target = labels_BS[:, k:]
        valid = target != -100
        ce = F.cross_entropy(
            logits.reshape(-1, V), target.reshape(-1), reduction="none", ignore_index=-100
        )
        w = torch.where(valid, w_BS[:, k:], 0.0).reshape(-1)
        total = total + d[k - 1] * (w * ce).sum() / w.sum()
    return total


def make_batch(seed=0, B=3, S=12):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, S), generator=g)
    labels = tokens.clone()
    labels[:, :3] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    w = torch.rand(B, S, generator=g) * 2 + 0.1
    return tokens, labels, w


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


STRATEGIES = [("per_head", False), ("per_head", True), ("chunked", False), ("joint", False)]
"""Every ``training.mtp_loss``, and per_head in one backward (as it runs on a sharded model)."""


@pytest.mark.parametrize(("strategy", "one_backward"), STRATEGIES)
@pytest.mark.parametrize("chunk_size", [0, 5])
def test_gradients_equal_all_heads_reference(strategy, one_backward, chunk_size):
    torch.manual_seed(0)
    model = StandIn()
    tokens, labels, w = make_batch()
    depth = (1.0, 0.5, 0.25)
    ref = reference_loss(model, tokens, labels, w, depth)
    ref.backward()
    ref_grads = grads(model)
    model.zero_grad()
    cfg = MTPLossConfig(
        strategy=strategy, one_backward=one_backward, chunk_size=chunk_size, depth_weights=depth
    )
    stats = loss_and_backward(model, tokens, labels, n_heads=N_HEADS, weights=w, config=cfg)
    assert torch.allclose(stats.total_loss(depth), ref.detach(), atol=1e-6, rtol=1e-6)
    got = grads(model)
    assert got.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(got[name], ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_head_k_scores_token_t_plus_k_and_counts():
    """Labels shifted by k; tokens counted per head; accuracy from argmax."""
    torch.manual_seed(1)
    model = StandIn()
    tokens, labels, _ = make_batch(B=2, S=8)
    stats = loss_and_backward(model, tokens, labels, n_heads=N_HEADS, backward=False)
    for k in range(1, N_HEADS + 1):
        assert stats.n_tokens_K[k - 1] == (labels[:, k:] != -100).sum()
    logits = model.all_logits(tokens).detach()
    for k in range(1, N_HEADS + 1):
        pred = logits[:, : 8 - k, k - 1].argmax(-1)
        target = labels[:, k:]
        assert stats.n_correct_K[k - 1] == ((pred == target) & (target != -100)).sum()
        ce = F.cross_entropy(logits[:, : 8 - k, k - 1].reshape(-1, V), target.reshape(-1))
        torch.testing.assert_close(stats.head_losses()[k - 1], ce, atol=1e-6, rtol=1e-6)


def test_global_denominators_make_microbatches_add_up():
    """Two halves with global sum(w) give the loss and grads of the whole batch."""
    torch.manual_seed(2)
    model = StandIn()
    tokens, labels, w = make_batch(B=4)
    loss_and_backward(model, tokens, labels, n_heads=N_HEADS, weights=w)
    whole = grads(model)
    model.zero_grad()
    denom = weight_sums(labels, N_HEADS, w)
    total = None
    for half in (slice(0, 2), slice(2, 4)):
        s = loss_and_backward(
            model,
            tokens[half],
            labels[half],
            n_heads=N_HEADS,
            weights=w[half],
            denominators_K=denom,
        )
        total = s if total is None else total + s
    for name, g in grads(model).items():
        torch.testing.assert_close(g, whole[name], atol=1e-6, rtol=1e-5)
    assert isinstance(total, MTPStats)
    torch.testing.assert_close(total.weight_sum_K, denom)


def test_callable_weights_see_the_head_cross_entropy():
    torch.manual_seed(3)
    model = StandIn()
    tokens, labels, _ = make_batch()
    seen = {}

    def keep_hard_tokens(k, ce_BT, targets_BT):
        seen[k] = ce_BT.clone()
        return (ce_BT > ce_BT[targets_BT != -100].median()).float()

    stats = loss_and_backward(model, tokens, labels, n_heads=N_HEADS, weights=keep_hard_tokens)
    assert sorted(seen) == [1, 2, 3]
    logits = model.all_logits(tokens).detach()
    ce1 = F.cross_entropy(
        logits[:, :-1, 0].reshape(-1, V),
        labels[:, 1:].reshape(-1),
        reduction="none",
        ignore_index=-100,
    )
    torch.testing.assert_close(seen[1].reshape(-1), ce1, atol=1e-5, rtol=1e-5)
    assert 0 < stats.weight_sum_K[0] < stats.n_tokens_K[0]


def test_linear_cross_entropy_bf16_close_to_fp32():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(33, D, generator=g)
    W = torch.randn(V, D, generator=g) * 0.3
    t = torch.randint(0, V, (33,), generator=g)
    coef = torch.full((33,), 1 / 33)
    loss32, _, _ = linear_cross_entropy(h, W, t, coef, chunk_size=8)
    loss16, _, _ = linear_cross_entropy(h.bfloat16(), W.bfloat16(), t, coef, chunk_size=8)
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()


def test_packed_batch_heads_never_predict_across_documents():
    """Head k at the end of one document must not score the next document's first tokens."""
    from wmtp.losses.mtp import head_targets, weight_sums

    labels_BS = torch.tensor([[10, 11, 12, 13, 20, 21, 22]])  # doc 0: 4 tokens, doc 1: 3 tokens
    docs_BS = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    t2 = head_targets(labels_BS, 2, docs_BS)
    # position t scores labels[t + 2]; positions 2 and 3 (doc 0) would reach doc 1's 20 and 21
    assert t2.tolist() == [[12, 13, -100, -100, 22]]
    assert head_targets(labels_BS, 2).tolist() == [[12, 13, 20, 21, 22]]  # unpacked: no boundary
    assert weight_sums(labels_BS, 3, document_ids_BS=docs_BS).tolist() == [5.0, 3.0, 1.0]


@pytest.mark.parametrize(("strategy", "one_backward"), STRATEGIES)
def test_lora_on_a_model_whose_layers_are_all_heads(strategy, one_backward):
    """Nothing in the trunk trains (its only module is the frozen embedding): the per-head
    backward must not run a trunk backward, and the heads' adapters still get gradients."""
    import dataclasses

    from wmtp.models.args import FLAVOURS
    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.models.lora import apply_lora

    args = dataclasses.replace(FLAVOURS["tiny"], vocab_size=V, n_layers=2, n_future_tokens=2)
    torch.manual_seed(0)
    model = LlamaMTP(args, attention="eager")
    apply_lora(model, rank=2, alpha=4.0, targets=["wq", "wo"])
    tokens, labels, _ = make_batch()
    cfg = MTPLossConfig(strategy=strategy, one_backward=one_backward)
    loss_and_backward(model, tokens, labels, n_heads=2, config=cfg)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    assert not any(p.grad is not None for p in model.parameters() if not p.requires_grad)


def test_an_unknown_strategy_is_refused():
    with pytest.raises(AssertionError, match="sequential"):
        MTPLossConfig(strategy="sequential")  # the old name of per_head


@pytest.mark.parametrize("packed", [False, True])
def test_valid_target_index_lists_each_heads_unignored_targets_in_order(packed):
    """Head k's valid targets, flat over ``[B, S-k]``: label t+k not ignored and, in a packed
    batch, in the same document as position t; checked against a loop over the positions."""
    from wmtp.losses.mtp import valid_target_index

    g = torch.Generator().manual_seed(0)
    B, S, n = 3, 17, 4
    labels = torch.randint(0, 50, (B, S), generator=g)
    labels[torch.rand(B, S, generator=g) < 0.3] = -100
    docs = torch.randint(0, 3, (B, S), generator=g).sort(dim=1).values if packed else None
    got = valid_target_index(labels, n, docs)
    for k in range(1, n + 1):
        want = [
            b * (S - k) + t
            for b in range(B)
            for t in range(S - k)
            if labels[b, t + k] != -100 and (docs is None or docs[b, t + k] == docs[b, t])
        ]
        assert got[k - 1].tolist() == want


def test_a_given_target_index_trains_as_the_one_found_on_the_device():
    """``loss_and_backward(valid_index_K=...)`` (the pipeline's, computed on the host) gives the
    loss and gradients of computing the index itself."""
    from wmtp.losses.mtp import valid_target_index

    torch.manual_seed(0)
    model = StandIn()
    tokens, labels, w = make_batch()
    results = []
    for index in (None, valid_target_index(labels, N_HEADS)):
        model.zero_grad(set_to_none=True)
        stats = loss_and_backward(
            model, tokens, labels, n_heads=N_HEADS, weights=w, valid_index_K=index
        )
        results.append((stats.as_tensor(), grads(model)))
    (stats_a, grads_a), (stats_b, grads_b) = results
    torch.testing.assert_close(stats_a, stats_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=0, msg=name)
