"""Divergences against direct formulas; fused statistics against the separate functions."""

import math

import pytest
import torch

from tiplight import losses


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


def test_divergence_names():
    assert losses.get_divergence("reverse_kl") is losses.reverse_kl
    with pytest.raises(ValueError, match=r"divergence='kl'.*reverse_kl, forward_kl, jsd"):
        losses.get_divergence("kl")
    with pytest.raises(ValueError, match="jsd_beta=1.5"):
        losses.get_divergence("jsd", 1.5)
