"""Chunked statistics equal unchunked ones; the selected-position loss equals the naive full-logit loss,
gradients included; and no [N, V] logits are ever saved for backward."""

import pytest
import torch
from torch import nn

from tiplight import losses
from tiplight.objective import selected_loss_sum
from tiplight.stats import token_stats

R, C, D, DT, V_MODEL, V = 3, 9, 8, 12, 40, 37


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(R, C, D, generator=g)
    teacher_hidden = torch.randn(R, C, DT, generator=g)
    torch.manual_seed(0)
    head, teacher_head = nn.Linear(D, V_MODEL, bias=False), nn.Linear(DT, V_MODEL, bias=False)
    valid = torch.rand(R, C, generator=g) > 0.3
    return hidden, teacher_hidden, head, teacher_head, valid


def naive_stats(hidden, teacher_hidden, head, teacher_head):
    s, t = head(hidden)[..., :V], teacher_head(teacher_hidden)[..., :V]  # [R, C, V]
    p, q = s.softmax(-1), t.softmax(-1)
    h = -(p * p.log()).sum(-1) / torch.log(torch.tensor(float(V)))
    return h, (p * (p.log() - q.log())).sum(-1), (q * (q.log() - p.log())).sum(-1)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_stats_equal_direct(setup, chunk):
    hidden, teacher_hidden, head, teacher_head, valid = setup
    raw = token_stats(hidden, head, teacher_hidden, teacher_head, valid, V, chunk)
    for got, want in zip((raw.entropy, raw.rkl, raw.fkl), naive_stats(hidden, teacher_hidden, head, teacher_head)):
        torch.testing.assert_close(got, torch.where(valid, want, torch.zeros_like(want)))


def naive_loss(hidden, teacher_hidden, head, teacher_head, weights, divergence):
    """The pattern of the paper's code and TRL: full [R, C, V] logits with grad, masked afterwards."""
    s = head(hidden)[..., :V]
    with torch.no_grad():
        t = teacher_head(teacher_hidden)[..., :V]
    return (divergence(s.flatten(0, 1), t.flatten(0, 1)) * weights.flatten()).sum()


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
@pytest.mark.parametrize("all_kept", [True, False])
def test_selected_loss_and_grads_equal_naive(setup, divergence, all_kept):
    hidden, teacher_hidden, head, teacher_head, valid = setup
    div = losses.get_divergence(divergence, 0.3)
    weights = valid.float() if all_kept else valid.float() * torch.linspace(0, 2, C)
    h1 = hidden.clone().requires_grad_()
    expected = naive_loss(h1, teacher_hidden, head, teacher_head, weights, div)
    expected.backward()
    grads = h1.grad.clone(), head.weight.grad.clone()
    head.weight.grad = None

    h2 = hidden.clone().requires_grad_()
    mask = weights > 0
    got = selected_loss_sum(h2[mask], teacher_hidden[mask], weights[mask], head, teacher_head, div, V, chunk_size=2)
    got.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h2.grad, grads[0])
    torch.testing.assert_close(head.weight.grad, grads[1])


def test_nothing_kept_gives_zero_loss_and_connected_graph(setup):
    hidden, teacher_hidden, head, teacher_head, _ = setup
    h = hidden.clone().requires_grad_()
    mask = torch.zeros(R, C, dtype=torch.bool)
    loss = selected_loss_sum(h[mask], teacher_hidden[mask], torch.ones(0), head, teacher_head,
                             losses.reverse_kl, V)
    loss.backward()
    assert loss.item() == 0 and h.grad is not None and head.weight.grad is not None


def max_saved_numel(fn) -> int:
    """Largest tensor that autograd saves for backward while ``fn`` runs."""
    sizes = [0]

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_no_full_logits_are_saved_for_backward(setup):
    """The analytic memory bound: the graph keeps hidden states, never [K, V] logits, whatever K is."""
    _, _, head, teacher_head, _ = setup
    n = 64
    h = torch.randn(n, D, requires_grad=True)
    t = torch.randn(n, DT)
    naive = max_saved_numel(lambda: losses.reverse_kl(head(h)[:, :V], teacher_head(t)[:, :V]).sum())
    ours = max_saved_numel(lambda: selected_loss_sum(h, t, torch.ones(n), head, teacher_head,
                                                     losses.reverse_kl, V, chunk_size=8))
    assert naive >= n * V  # the naive path saves full logits
    assert ours <= max(n * D, n * DT, V_MODEL * D)  # ours saves inputs (hidden states, weights) only
