"""The chunked linear cross-entropy against autograd through the whole logits.

Both gradient paths (computed in the forward; recomputed in the backward) and the fused per-chunk
kernels (compiled on CUDA, eager here) must give the reference's loss, statistics and gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.gpu import cuda_marks, needs_cuda
from wmtp.losses.linear_ce import (
    SharedWeightGradient,
    accumulate_matmul,
    chunk_stats_and_grad,
    kernel,
    linear_cross_entropy,
)

N, D, V = 37, 16, 53


def inputs(seed: int = 0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g)
    weight = torch.randn(V, D, generator=g) * 0.3
    targets = torch.randint(0, V, (N,), generator=g)
    coef = torch.rand(N, generator=g) / N
    to = dict(device=device)
    return (
        hidden.to(dtype=dtype, **to).requires_grad_(True),
        weight.to(dtype=dtype, **to).requires_grad_(True),
        targets.to(**to),
        coef.to(**to),
    )


def reference(hidden, weight, targets, coef, grad_scale):
    logits = (hidden @ weight.T).float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    loss = (coef * ce).sum()
    (loss * grad_scale).backward()
    return loss.detach(), ce.detach(), logits.argmax(-1) == targets


def reference_loss(hidden, weight, targets, coef):
    return (coef * F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")).sum()


def test_heads_sharing_one_weight_gradient_match_separate_losses():
    """Two heads add their unembedding gradients into one fp32 buffer in the forward; the
    hand-over scalar gives it to the weight in the one backward (scaled like the losses)."""
    h1_ref, w_ref, t1, c1 = inputs(seed=1)
    h2_ref, _, t2, c2 = inputs(seed=2)
    loss_ref = (reference_loss(h1_ref, w_ref, t1, c1) + reference_loss(h2_ref, w_ref, t2, c2)) * 2.0
    loss_ref.backward()
    h1, w, _, _ = inputs(seed=1)
    h2, _, _, _ = inputs(seed=2)
    shared = SharedWeightGradient(w)
    losses = [
        linear_cross_entropy(h, w.detach(), t, c, 8, weight_grad_into=shared.buffer)[0]
        for h, t, c in ((h1, t1, c1), (h2, t2, c2))
    ]
    ((losses[0] + losses[1] + shared.hand_over()) * 2.0).backward()
    torch.testing.assert_close(losses[0] + losses[1], loss_ref.detach() / 2.0)
    torch.testing.assert_close(h1.grad, h1_ref.grad)
    torch.testing.assert_close(h2.grad, h2_ref.grad)
    torch.testing.assert_close(w.grad, w_ref.grad)


@pytest.mark.parametrize("grad_in_forward", [True, False])
@pytest.mark.parametrize("chunk_size", [0, 8, 10, N + 5])
def test_loss_statistics_and_gradients_match_the_whole_logits(grad_in_forward, chunk_size):
    h_ref, w_ref, targets, coef = inputs()
    loss_ref, ce_ref, correct_ref = reference(h_ref, w_ref, targets, coef, grad_scale=3.0)
    h, w, _, _ = inputs()
    loss, ce, correct = linear_cross_entropy(
        h, w, targets, coef, chunk_size, grad_in_forward=grad_in_forward
    )
    (loss * 3.0).backward()  # a non-unit incoming gradient scales both paths' results
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(ce, ce_ref)
    assert torch.equal(correct, correct_ref)
    torch.testing.assert_close(h.grad, h_ref.grad)
    torch.testing.assert_close(w.grad, w_ref.grad)


@pytest.mark.parametrize("grad_in_forward", [True, False])
def test_a_frozen_weight_gets_no_gradient_and_the_hidden_one_is_unchanged(grad_in_forward):
    h_ref, w_ref, targets, coef = inputs()
    reference(h_ref, w_ref, targets, coef, grad_scale=1.0)
    h, w, _, _ = inputs()
    w.requires_grad_(False)  # a frozen unembedding, as under LoRA
    loss, _, _ = linear_cross_entropy(h, w, targets, coef, 8, grad_in_forward=grad_in_forward)
    loss.backward()
    assert w.grad is None
    torch.testing.assert_close(h.grad, h_ref.grad)


def test_without_gradients_nothing_is_computed_for_a_backward():
    h, w, targets, coef = inputs()
    with torch.no_grad():
        loss, ce, _ = linear_cross_entropy(h, w, targets, coef, 8)
    loss_ref, ce_ref, _ = reference(*inputs(), grad_scale=1.0)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(ce, ce_ref)
    assert h.grad is None and not loss.requires_grad


def test_bf16_weights_get_bf16_gradients_close_to_fp32():
    h32, w32, targets, coef = inputs(seed=1)
    linear_cross_entropy(h32, w32, targets, coef, 8)[0].backward()
    h16, w16, _, _ = inputs(seed=1, dtype=torch.bfloat16)
    linear_cross_entropy(h16, w16, targets, coef, 8)[0].backward()
    assert w16.grad.dtype == h16.grad.dtype == torch.bfloat16
    for g16, g32 in ((h16.grad, h32.grad), (w16.grad, w32.grad)):
        assert (g16.float() - g32).norm() / g32.norm() < 2e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda_marks("no CUDA here"))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulated_matmul_adds_the_product_in_fp32(device, dtype):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(40, 30, generator=g), torch.randn(30, 20, generator=g)
    acc = torch.randn(40, 20, generator=g)
    a, b, acc = a.to(device, dtype), b.to(device, dtype), acc.to(device)
    want = acc + a.float() @ b.float()
    accumulate_matmul(acc, a, b)
    assert acc.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 or device == "cuda" else 2e-2  # CPU rounds to bf16 first
    assert (acc - want).norm() / want.norm() < tol


@needs_cuda("the compiled kernels run on CUDA")
def test_compiled_chunk_kernels_match_eager_on_cuda():
    h, w, targets, coef = inputs(dtype=torch.bfloat16, device="cuda")
    logits = (h @ w.T).detach()
    eager = chunk_stats_and_grad(logits, targets, coef)
    compiled = kernel(chunk_stats_and_grad, logits.device)(logits, targets, coef)
    for a, b in zip(compiled, eager, strict=True):
        if a.dtype == torch.bool:
            assert (a == b).float().mean() > 0.97  # argmax ties may break either way
        else:
            torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=2e-2)
    for mode in ("grad_in_forward", "recompute", "shared_weight_gradient"):
        h_ref, w_ref, _, _ = inputs(dtype=torch.bfloat16, device="cuda")
        reference(h_ref, w_ref, targets, coef, grad_scale=1.0)
        h2, w2, _, _ = inputs(dtype=torch.bfloat16, device="cuda")
        if mode == "shared_weight_gradient":
            shared = SharedWeightGradient(w2)
            loss, _, _ = linear_cross_entropy(
                h2, w2.detach(), targets, coef, 8, weight_grad_into=shared.buffer
            )
            loss = loss + shared.hand_over()
        else:
            loss, _, _ = linear_cross_entropy(
                h2, w2, targets, coef, 8, grad_in_forward=mode == "grad_in_forward"
            )
        loss.backward()
        for got, want in ((h2.grad, h_ref.grad), (w2.grad, w_ref.grad)):
            assert (got.float() - want.float()).norm() / want.float().norm() < 2e-2
