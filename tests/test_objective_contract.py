"""One contract suite over every registered objective: its loss against a direct formula, and through each
path of ``selected_loss_sum`` (precomputed, closed form, autograd) the gradient of the naive full-logit
reference, with kept-token masking, float weights and chunks; then a whole DistillModule step per
objective with micro-batches and both denominators, and with a rollout that carries sampler log-probs."""

from __future__ import annotations

import pytest
import torch
from engines import SamplerLogprobs
from helpers import make_data, make_module, make_trainer
from torch import nn

from tiplight.args import Memory, Optimization
from tiplight.chunked_stats import token_stats_and_loss
from tiplight.models import LoRA
from tiplight.objective import selected_loss_sum
from tiplight.objectives import (
    JSD,
    ForwardKL,
    ReverseKL,
    SampledTokenPG,
    TokenContext,
    TopKDivergence,
    get_objective,
    list_objectives,
    register_objective,
)
from tiplight.passes import token_context
from tiplight.rollout import Rollout
from tiplight.selection import SoftOrTopK

R, C, P, D, DT, V_MODEL, V = 3, 9, 2, 8, 12, 40, 37
CASES = {  # id -> objective; every registered class has at least one
    "ReverseKL": ReverseKL(),
    "ForwardKL": ForwardKL(),
    "JSD": JSD(0.3),
    "TopKDivergence": TopKDivergence(k=5),
    "TopKDivergence_renormalised_forward": TopKDivergence(k=5, tail=False, direction="forward"),
    "TopKDivergence_all_tokens": TopKDivergence(k=V),  # the tail bucket holds no mass
    "SampledTokenPG": SampledTokenPG(),
    "SampledTokenPG_k3_sequence": SampledTokenPG("k3", ratio="sequence"),
    "SampledTokenPG_unclipped": SampledTokenPG(clip=None),
}
SAMPLER = [False, True]  # whether the rollout carries the sampler's log-probabilities


def test_every_registered_objective_has_a_case():
    assert {type(o).__name__ for o in CASES.values()} == set(list_objectives())
    assert isinstance(get_objective("JSD", beta=0.3), JSD)


# --- the loss against a direct formula ----------------------------------------------------------------
def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


def direct(objective, s: torch.Tensor, t: torch.Tensor, context: TokenContext) -> torch.Tensor:
    """Each objective's loss from its paper's formula on probabilities (no log-softmax tricks)."""
    p, q = s.softmax(-1), t.softmax(-1)
    if isinstance(objective, ReverseKL):
        return kl(p, q)
    if isinstance(objective, ForwardKL):
        return kl(q, p)
    if isinstance(objective, JSD):
        m = objective.beta * q + (1 - objective.beta) * p
        return objective.beta * kl(q, m) + (1 - objective.beta) * kl(p, m)
    if isinstance(objective, TopKDivergence):
        index = q.topk(min(objective.k, q.shape[-1]), -1).indices
        ps, qt = p.gather(-1, index), q.gather(-1, index)
        if objective.tail:
            ps = torch.cat([ps, (1 - ps.sum(-1, keepdim=True)).clamp(min=1e-38)], -1)
            qt = torch.cat([qt, (1 - qt.sum(-1, keepdim=True)).clamp(min=1e-38)], -1)
        else:
            ps, qt = ps / ps.sum(-1, keepdim=True), qt / qt.sum(-1, keepdim=True)
        return kl(ps, qt) if objective.direction == "reverse" else kl(qt, ps)
    return direct_pg(objective, p, q, context)


def direct_pg(objective: SampledTokenPG, p, q, context: TokenContext) -> torch.Tensor:
    """PPO's clipped surrogate with advantage -k(S, T) on the sampled token (Schulman's k1 / k3)."""
    ps, qt = p.gather(-1, context.token[:, None])[:, 0], q.gather(-1, context.token[:, None])[:, 0]
    r = (qt / ps).detach()
    advantage = r.log() if objective.estimator == "k1" else -(r - 1 - r.log())
    if objective.ratio == "sequence":
        log_ratio = 0.0 if context.sequence_log_ratio is None else context.sequence_log_ratio
        ratio = ps / ps.detach() * torch.exp(torch.as_tensor(log_ratio))
    else:
        ratio = ps / (ps.detach() if context.sampler_logprob is None else context.sampler_logprob.exp())
    if objective.clip is None:
        return -ratio * advantage
    clipped = ratio.clamp(1 - objective.clip, 1 + objective.clip)
    return -torch.min(ratio * advantage, clipped * advantage)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, V, generator=g) * 2, torch.randn(6, V, generator=g) * 2
    token = torch.randint(0, V, (6,), generator=g)
    sampler = s.log_softmax(-1).gather(-1, token[:, None])[:, 0] + torch.linspace(-0.5, 0.5, 6)
    return s, t, token, sampler


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sampler", SAMPLER)
def test_loss_and_logit_gradient_equal_the_direct_formula(logits, case, sampler):
    objective = CASES[case]
    s, t, token, lp = logits
    context = TokenContext(token, lp if sampler else None, torch.full((6,), -0.3) if sampler else None)
    x, y = s.clone().requires_grad_(), s.clone().requires_grad_()
    got, want = objective.loss(x, t, context), direct(objective, y, t, context)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    weights = torch.linspace(0.5, 2, 6)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-6)


def test_sampled_token_pg_at_ratio_one_is_k_times_the_score_function(logits):
    """On-policy (no sampler log-probs) the gradient is k * grad log P_S(token) and the loss is k."""
    s, t, token, _ = logits
    for estimator in ("k1", "k3"):
        x = s.clone().requires_grad_()
        loss = SampledTokenPG(estimator).loss(x, t, TokenContext(token))
        loss.sum().backward()
        lp_s, lp_t = s.log_softmax(-1), t.log_softmax(-1)
        log_r = (lp_t - lp_s).gather(-1, token[:, None])[:, 0]
        k = -log_r if estimator == "k1" else log_r.exp() - 1 - log_r
        score = nn.functional.one_hot(token, V) - s.softmax(-1)  # d log P_S(token) / d s
        torch.testing.assert_close(loss.detach(), k)
        torch.testing.assert_close(x.grad, k[:, None] * score)


def test_clipping_stops_the_gradient_outside_the_trust_region(logits):
    s, t, token, lp = logits
    x = s.clone().requires_grad_()
    far = lp - 1.0  # ratio e: above 1 + clip
    loss = SampledTokenPG().loss(x, t, TokenContext(token, far))
    advantage = (t.log_softmax(-1) - s.log_softmax(-1)).gather(-1, token[:, None])[:, 0]
    loss.sum().backward()
    frozen = advantage > 0  # r A > clip(r) A: the clipped constant wins
    assert (x.grad[frozen] == 0).all() and (x.grad[~frozen].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("bad,message", [
    (lambda: JSD(beta=1.0), r"JSD: beta=1.0 is not allowed"),
    (lambda: TopKDivergence(k=0), r"TopKDivergence: k=0 is not allowed"),
    (lambda: SampledTokenPG(estimator="k2"), r"estimator='k2' is not allowed; use one of k1, k3"),
    (lambda: SampledTokenPG(clip=1.5), r"clip=1.5 is not allowed"),
    (lambda: ReverseKL(denominator="all"), r"denominator='all' is not allowed; use one of kept, valid"),
    (lambda: get_objective("KL"), r"Unknown objective 'KL'; registered objectives: ForwardKL, JSD"),
    (lambda: SampledTokenPG().loss(torch.zeros(1, 3), torch.zeros(1, 3), None), r"reads the sampled tokens"),
])
def test_bad_objective_input_is_one_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_registry_is_strict():
    class ReverseKL(JSD):  # another class under a taken name
        pass

    with pytest.raises(ValueError, match="objective named 'ReverseKL' is already registered"):
        register_objective(ReverseKL)
    with pytest.raises(TypeError, match="expects an Objective subclass"):
        register_objective(int)


# --- the paths of selected_loss_sum against the naive full-logit reference -------------------------------
class WrappedHead(nn.Linear):
    """A head that is no plain nn.Linear (as LoRA or FSDP wrap one): the autograd path serves it."""


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    hidden, teacher_hidden = torch.randn(R, C, D, generator=g), torch.randn(R, C, DT, generator=g)
    torch.manual_seed(0)
    teacher_head = nn.Linear(DT, V_MODEL, bias=False)
    valid = torch.rand(R, C, generator=g) > 0.3
    tokens = torch.randint(0, V, (R, C), generator=g)
    offsets = torch.randn(R, C, generator=g) * 0.1  # the sampler's log-probs: the student's, perturbed
    return hidden, teacher_hidden, teacher_head, valid, tokens, offsets


def make_head(path: str) -> nn.Module:
    torch.manual_seed(1)
    if path == "autograd":
        return WrappedHead(D, V_MODEL, bias=True)
    return nn.Linear(D, V_MODEL, bias=path == "closed_form").requires_grad_(path != "precomputed")


def rollout_of(tokens: torch.Tensor, valid: torch.Tensor, sampler: torch.Tensor | None) -> Rollout:
    ids = torch.cat([torch.zeros(R, P, dtype=torch.long), tokens], 1)
    return Rollout(ids, torch.ones_like(ids), valid, P, sampler)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", ["precomputed", "closed_form", "autograd"])
@pytest.mark.parametrize("sampler", SAMPLER)
@pytest.mark.parametrize("chunk", [2, 1000])
def test_selected_loss_and_grads_equal_naive(setup, case, path, sampler, chunk):
    """Float weights on a kept subset: the loss and every gradient equal the full-logit reference's, and
    positions that were not kept get none. Only objectives with a closed form take the fast paths."""
    objective = CASES[case]
    hidden, teacher_hidden, teacher_head, valid, tokens, offsets = setup
    head = make_head(path)
    with torch.no_grad():
        student_lp = head(hidden)[..., :V].log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    rollout = rollout_of(tokens, valid, (student_lp + offsets) * valid if sampler else None)
    raw, token_loss = token_stats_and_loss(hidden, head, teacher_hidden, teacher_head, valid, V, chunk, objective,
                                           grad=True, tokens=tokens if sampler else None)
    context = token_context(rollout, raw)  # [R, C]
    weights = valid * torch.linspace(0, 2, C) * (torch.rand(R, C, generator=torch.Generator().manual_seed(2)) > 0.3)
    mask = weights > 0

    h1 = hidden.clone().requires_grad_()
    s = head(h1)[..., :V]
    with torch.no_grad():
        t = teacher_head(teacher_hidden)[..., :V]
    expected = (direct(objective, s[mask], t[mask], context.at(mask)) * weights[mask]).sum()
    want = [*torch.autograd.grad(expected, [h1, *(p for p in head.parameters() if p.requires_grad)])]

    h2 = hidden.clone().requires_grad_()
    got = selected_loss_sum(h2[mask], teacher_hidden[mask], weights[mask], head, teacher_head, objective, V, chunk,
                            token_loss.at(mask) if token_loss is not None else None, context.at(mask))
    fast = objective.closed_form(context.at(mask)) is not None and path != "autograd"
    assert (type(got.grad_fn).__name__ == "_PrecomputedBackward") == fast
    params = [p for p in head.parameters() if p.requires_grad]
    grads = torch.autograd.grad(got, [h2, *params])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (grads[0][~mask] == 0).all()


def test_sequence_log_ratio_is_the_rollouts_mean_over_valid_tokens(setup):
    hidden, teacher_hidden, teacher_head, valid, tokens, offsets = setup
    head = make_head("closed_form")
    raw, _ = token_stats_and_loss(hidden, head, teacher_hidden, teacher_head, valid, V, 4, tokens=tokens)
    sampler = (raw.logprob - offsets) * valid
    context = token_context(rollout_of(tokens, valid, sampler), raw)
    for r in range(R):
        want = offsets[r][valid[r]].mean()
        torch.testing.assert_close(context.sequence_log_ratio[r], want.expand(C))


# --- whole steps: micro-batches, denominators, sampler log-probs ----------------------------------------
def naive_step_grads(module) -> list[torch.Tensor]:
    """The step's gradient from full logits of both models over the whole rollout (the direct formula)."""
    record, objective = module.last_step, module.objective
    r, weights = record.rollout, record.weights
    mask = r.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        t = module.teacher(input_ids=r.input_ids, attention_mask=mask, position_ids=pos).logits
    s = module.student(input_ids=r.input_ids, attention_mask=mask, position_ids=pos).logits  # [R, L, V]
    span, v, valid = slice(r.prompt_length - 1, r.input_ids.shape[1] - 1), module.vocab_size, record.stats.valid
    s, t = s[:, span, :v], t[:, span, :v]
    sampler, sequence = r.sampler_logprobs, None
    if sampler is not None:
        own = s.detach().log_softmax(-1).gather(-1, r.completion_ids[..., None])[..., 0]
        sequence = (((own - sampler) * valid).sum(1) / valid.sum(1))[:, None].expand_as(valid)
    context = TokenContext(r.completion_ids, sampler, sequence)
    kept = weights > 0
    per_token = direct(objective, s[kept], t[kept], context.at(kept))
    n = valid.sum() if objective.denominator == "valid" else kept.sum()
    params = [p for p in module.student.parameters() if p.requires_grad]
    return list(torch.autograd.grad((per_token * weights[kept]).sum() / n, params))


STEPS = {  # id -> (objective, module options)
    **{f"{name}_full_micro3": (get_objective(name), dict(memory=Memory(micro_batch_size=3, chunk_size=5)))
       for name in list_objectives()},
    **{f"{name}_lora_valid": (get_objective(name, denominator="valid"), dict(lora=LoRA(r=4, alpha=8)))
       for name in list_objectives()},
    "SampledTokenPG_sampler_micro3": (SampledTokenPG(), dict(memory=Memory(micro_batch_size=3), engine=SamplerLogprobs(0.1))),
    "SampledTokenPG_sequence_sampler": (SampledTokenPG("k3", ratio="sequence"), dict(engine=SamplerLogprobs(-0.1))),
}


@pytest.mark.parametrize("case", list(STEPS))
def test_step_gradient_equals_the_direct_formula(tiny, prompts_file, tmp_path, case):
    objective, options = STEPS[case]
    module = make_module(tiny, optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
                         optimization=Optimization(lr_schedule="constant", grad_clip=None),
                         selector=SoftOrTopK(0.5), objective=objective, **options)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, make_data(prompts_file))
    want = naive_step_grads(module)
    got = [p.grad for p in module.student.parameters() if p.requires_grad]
    assert len(got) == len(want) and all(g is not None for g in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    gap = trainer.callback_metrics.get("train/sampler_logprob_gap")
    if "sampler" in case:  # the engine's log-probs sit 0.1 from the trainer's
        torch.testing.assert_close(gap, torch.tensor(0.1), rtol=0, atol=1e-4)
    else:  # HFGenerate reports its own log-probs: the same weights as the trainer's, so no gap
        assert gap is not None and 0 <= float(gap) < 1e-4
