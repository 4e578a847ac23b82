"""Chunked statistics equal unchunked ones; the selected-position loss equals the naive full-logit loss,
gradients included; and no [N, V] logits are ever saved for backward."""

import pytest
import torch
from torch import nn

from tiplight import losses
from tiplight.chunked_stats import token_stats_and_loss
from tiplight.objective import selected_loss_sum
from tiplight.objectives import JSD, ForwardKL, ReverseKL

R, C, D, DT, V_MODEL, V = 3, 9, 8, 12, 40, 37
OBJECTIVES = {"reverse_kl": ReverseKL(), "forward_kl": ForwardKL(), "jsd": JSD(0.3)}


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
    raw, _ = token_stats_and_loss(hidden, head, teacher_hidden, teacher_head, valid, V, chunk)
    for got, want in zip((raw.entropy, raw.rkl, raw.fkl), naive_stats(hidden, teacher_hidden, head, teacher_head)):
        torch.testing.assert_close(got, torch.where(valid, want, torch.zeros_like(want)))


def naive_loss(hidden, teacher_hidden, head, teacher_head, weights, divergence):
    """The pattern of the paper's code and TRL: full [R, C, V] logits with grad, masked afterwards."""
    s = head(hidden)[..., :V]
    with torch.no_grad():
        t = teacher_head(teacher_hidden)[..., :V]
    return (divergence.loss(s.flatten(0, 1), t.flatten(0, 1), None) * weights.flatten()).sum()


def custom(objective):
    """The same divergence in a plugin without a closed form, so the autograd path serves it."""
    return type("Custom", (type(objective),), {"closed_form": lambda self, context=None: None})(**vars(objective))


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
@pytest.mark.parametrize("path", ["precomputed", "closed_form", "autograd"])
@pytest.mark.parametrize("chunk", [2, 1000])
@pytest.mark.parametrize("importance", [False, True])
def test_selected_loss_and_grads_equal_naive(setup, divergence, path, chunk, importance):
    """precomputed: frozen head, gradient from the statistics pass; closed_form: the head trains (with a
    bias), one pass over kept tokens; autograd: a divergence without a closed form."""
    hidden, teacher_hidden, _, teacher_head, valid = setup
    torch.manual_seed(1)
    head = nn.Linear(D, V_MODEL, bias=path == "closed_form").requires_grad_(path != "precomputed")
    div = OBJECTIVES[divergence]
    div = custom(div) if path == "autograd" else div
    weights = valid.float() * (torch.linspace(0, 2, C) if importance else 1.0)
    h1 = hidden.clone().requires_grad_()
    expected = naive_loss(h1, teacher_hidden, head, teacher_head, weights, div)
    expected.backward()
    want = [h1.grad] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
    head.zero_grad(set_to_none=True)

    h2 = hidden.clone().requires_grad_()
    _, token_loss = token_stats_and_loss(h2, head, teacher_hidden, teacher_head, valid, V, chunk, div, grad=True)
    assert (token_loss is not None and token_loss.grad_hidden is not None) == (path == "precomputed")
    mask = weights > 0
    got = selected_loss_sum(h2[mask], teacher_hidden[mask], weights[mask], head, teacher_head, div, V, chunk,
                            token_loss.at(mask) if token_loss is not None else None)
    assert (type(got.grad_fn).__name__ == "_PrecomputedBackward") == (path != "autograd")
    got.backward()
    torch.testing.assert_close(got, expected)
    for a, b in zip([h2.grad] + [p.grad for p in head.parameters() if p.requires_grad], want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk", [1, 4])
def test_token_loss_equals_divergence_and_is_zero_where_not_valid(setup, chunk):
    hidden, teacher_hidden, head, teacher_head, valid = setup
    for div in (ReverseKL(), ForwardKL(), JSD()):
        raw, token_loss = token_stats_and_loss(hidden, head, teacher_hidden, teacher_head, valid, V, chunk, div)
        with torch.no_grad():
            want = div.loss(head(hidden)[..., :V].flatten(0, 1), teacher_head(teacher_hidden)[..., :V].flatten(0, 1))
        torch.testing.assert_close(token_loss.loss, torch.where(valid, want.view(R, C), 0.0))
        assert token_loss.grad_hidden is None  # grad=False
        stats, _ = token_stats_and_loss(hidden, head, teacher_hidden, teacher_head, valid, V, chunk)
        torch.testing.assert_close(raw.rkl, stats.rkl)


class VocabTensors(torch.overrides.TorchFunctionMode):
    """Counts tensors with a vocabulary (last) dimension that torch functions return."""

    count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[-1] in (V, V_MODEL)
        return out


def test_without_grad_the_precomputed_loss_is_used(setup):
    """Validation: the statistics pass's per-token loss is summed, no vocabulary pass."""
    hidden, teacher_hidden, head, teacher_head, valid = setup
    _, token_loss = token_stats_and_loss(hidden, head, teacher_hidden, teacher_head, valid, V, 4, ReverseKL())
    with torch.no_grad(), VocabTensors() as seen:
        got = selected_loss_sum(hidden[valid], teacher_hidden[valid], torch.ones(int(valid.sum())), head,
                                teacher_head, ReverseKL(), V, 4, token_loss.at(valid))
    assert seen.count == 0
    torch.testing.assert_close(got, token_loss.loss.sum())


@pytest.mark.parametrize("frozen", [False, True])
def test_nothing_kept_gives_zero_loss_and_connected_graph(setup, frozen):
    hidden, teacher_hidden, head, teacher_head, valid = setup
    head.requires_grad_(not frozen)
    h = hidden.clone().requires_grad_()
    _, token_loss = token_stats_and_loss(h, head, teacher_hidden, teacher_head, valid, V, 4, ReverseKL(),
                                         grad=True)
    mask = torch.zeros(R, C, dtype=torch.bool)
    loss = selected_loss_sum(h[mask], teacher_hidden[mask], torch.ones(0), head, teacher_head,
                             ReverseKL(), V, 4, token_loss.at(mask))
    loss.backward()
    assert loss.item() == 0 and h.grad is not None and (frozen or head.weight.grad is not None)


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
                                                     ReverseKL(), V, chunk_size=8))
    assert naive >= n * V  # the naive path saves full logits
    assert ours <= max(n * D, n * DT, V_MODEL * D)  # ours saves inputs (hidden states, weights) only
