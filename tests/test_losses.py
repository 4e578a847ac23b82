"""Divergences against direct formulas; fused statistics against the separate functions."""

import math

import pytest
import torch

from tiplight import losses
from tiplight.objectives import JSD, ForwardKL, ReverseKL

OBJECTIVES = {"reverse_kl": ReverseKL(), "forward_kl": ForwardKL(), "jsd": JSD(0.3)}


def direct(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 11, generator=g) * 3, torch.randn(7, 11, generator=g) * 3


def test_entropy_matches_formula(logits):
    s, _ = logits
    p = s.softmax(-1)
    torch.testing.assert_close(losses.entropy(s), -(p * p.log()).sum(-1))
    uniform = torch.zeros(2, 16)
    torch.testing.assert_close(losses.entropy(uniform), torch.full((2,), math.log(16)))


def test_kl_directions(logits):
    s, t = logits
    p, q = s.softmax(-1), t.softmax(-1)
    torch.testing.assert_close(losses.reverse_kl(s, t), direct(p, q))
    torch.testing.assert_close(losses.forward_kl(s, t), direct(q, p))
    assert (losses.reverse_kl(s, s).abs() < 1e-6).all()


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_formula(logits, beta):
    s, t = logits
    p, q = s.softmax(-1), t.softmax(-1)
    m = beta * q + (1 - beta) * p
    expected = beta * direct(q, m) + (1 - beta) * direct(p, m)
    torch.testing.assert_close(losses.jsd(s, t, beta), expected)
    assert (losses.jsd(s, t, 0.5) <= math.log(2) + 1e-6).all()


def test_low_precision_inputs_compute_in_float32(logits):
    s, t = logits
    out = losses.reverse_kl(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, losses.reverse_kl(s.bfloat16().float(), t.bfloat16().float()))


def test_fused_token_divergences_equal_separate(logits):
    s, t = logits
    h, rkl, fkl = losses.token_divergences(s, t)
    torch.testing.assert_close(h, losses.entropy(s))
    torch.testing.assert_close(rkl, losses.reverse_kl(s, t))
    torch.testing.assert_close(fkl, losses.forward_kl(s, t))


@pytest.fixture
def masked_logits(logits):
    """Logits with ``-inf`` entries: a token impossible for both, for the student only, for the teacher only."""
    s, t = (x.clone() for x in logits)
    s[0, 3] = t[0, 3] = float("-inf")
    s[1, 2] = float("-inf")
    t[2, 4] = float("-inf")
    return s, t


def test_minus_inf_logits_give_no_nan(masked_logits):
    """0 log 0 = 0: an impossible token adds nothing; where the other side is impossible the KL is huge."""
    s, t = masked_logits
    h = losses.entropy(s)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h[1], losses.entropy(s[1, torch.arange(11) != 2][None])[0])
    for name, objective in OBJECTIVES.items():
        value = objective.loss(s, t)
        assert not value.isnan().any(), name
    keep = torch.arange(11) != 3  # row 0: the token both rule out changes nothing
    torch.testing.assert_close(losses.reverse_kl(s[:1], t[:1]), losses.reverse_kl(s[:1, keep], t[:1, keep]))
    assert losses.reverse_kl(s, t)[2] > 1e30 and losses.forward_kl(s, t)[1] > 1e30


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("masked", [False, True])
def test_closed_form_gradient_equals_autograd(logits, masked_logits, name, masked):
    """Value and gradient w.r.t. the student's logits; with -inf logits, on the rows whose divergence is
    finite (row 0: a token both rule out; row 1 for reverse KL and JSD; row 2 for forward KL and JSD)."""
    s, t = masked_logits if masked else logits
    rows = {"reverse_kl": [0, 1, 3], "forward_kl": [0, 2, 3], "jsd": [0, 1, 2, 3]}[name] if masked else slice(None)
    div = OBJECTIVES[name]
    x = s.clone().requires_grad_()
    want = div.loss(x, t)
    want[rows].sum().backward()
    h, rkl, fkl, loss, grad = losses.divergences_and_grad(s, t, div.closed_form())
    assert not grad.isnan().any()
    torch.testing.assert_close(loss[rows], want[rows].detach())
    torch.testing.assert_close(grad[rows], x.grad[rows])
    torch.testing.assert_close(h, losses.entropy(s))
    torch.testing.assert_close(rkl, losses.reverse_kl(s, t))
    torch.testing.assert_close(fkl, losses.forward_kl(s, t))


def test_consume_overwrites_float32_logits_only(logits):
    s, t = logits
    s32, t16 = s.clone(), t.bfloat16()
    copy16 = t16.clone()
    expected = losses.divergences_and_grad(s, t16)
    got = losses.divergences_and_grad(s32, t16, consume=True)
    assert not torch.equal(s32, s) and torch.equal(t16, copy16)
    for a, b in zip(got[:3], expected[:3]):
        torch.testing.assert_close(a, b)
