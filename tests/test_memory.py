"""Memory regression tests on analytic quantities (GitHub issue 6), not on timings.

On a tiny Qwen3 (vocabulary much larger than the hidden size, so logits dominate) the tiplight step
(`completion_hidden` -> `token_stats` -> `selected_loss_sum`) is compared with the naive step that
materialises full ``[R, L, V]`` logits with grad and masks afterwards:
- gradients of every student parameter agree;
- the largest logits tensor with grad is one chunk for tiplight, all positions for naive;
- autograd saves no ``[*, V]`` tensor on the tiplight path, and the saved elements shrink with the kept set.
"""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from tiplight import losses
from tiplight.objective import selected_loss_sum
from tiplight.stats import completion_hidden, position_ids, token_stats

R, P, C, V, CHUNK = 3, 4, 12, 512, 5


def tiny_qwen3(seed: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def setup():
    student, teacher = tiny_qwen3(0), tiny_qwen3(1).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(V, (R, P + C), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # one left-padded prompt
    return student, teacher, ids, mask


def keep_mask(retain: float) -> torch.Tensor:
    """``[R, C]``: the first ``retain`` share of each rollout's positions, in a scattered order."""
    order = torch.randperm(C, generator=torch.Generator().manual_seed(1))
    return (order < round(retain * C)).expand(R, C)


def tiplight_loss(student, teacher, ids, mask, keep) -> torch.Tensor:
    """The `DistillModule` single-pass path: decoder hidden states, chunked stats, selected loss."""
    s_head, t_head = student.get_output_embeddings(), teacher.get_output_embeddings()
    with torch.no_grad():
        t_hidden = completion_hidden(teacher, ids, mask, P)  # [R, C, d_t]
    hidden = completion_hidden(student, ids, mask, P)  # [R, C, d]
    token_stats(hidden, s_head, t_hidden, t_head, torch.ones_like(keep), V, CHUNK)
    return selected_loss_sum(hidden[keep], t_hidden[keep], torch.ones(int(keep.sum())), s_head, t_head,
                             losses.reverse_kl, V, CHUNK) / keep.sum()


def naive_loss(student, teacher, ids, mask, keep) -> torch.Tensor:
    """The paper's code and TRL's GKD pattern: full logits with grad, reverse KL everywhere, masked mean."""
    pos = position_ids(mask)  # [R, P + C], as completion_hidden and generate use them
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, P - 1 : -1]
    s_logits = student(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, P - 1 : -1]  # [R, C, V]
    return (losses.reverse_kl(s_logits, t_logits) * keep).sum() / keep.sum()


def grads(student, loss_fn, *args) -> list[torch.Tensor]:
    student.zero_grad(set_to_none=True)
    loss_fn(student, *args).backward()
    return [p.grad.clone() for p in student.parameters()]


@pytest.mark.parametrize("retain", [1.0, 0.5])
def test_step_gradients_equal_naive(setup, retain):
    student, teacher, ids, mask = setup
    keep = keep_mask(retain)
    for got, want in zip(grads(student, tiplight_loss, teacher, ids, mask, keep),
                         grads(student, naive_loss, teacher, ids, mask, keep)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def largest_logits(loss_fn, *args) -> dict[str, int]:
    """Largest lm_head output (elements) per head and grad mode, over forward and backward."""
    student, teacher = args[0], args[1]
    seen = {"student_grad": 0, "student_nograd": 0, "teacher": 0}

    def hook(name):
        def record(module, inputs, out):
            key = name if name == "teacher" else f"{name}_{'grad' if out.requires_grad else 'nograd'}"
            seen[key] = max(seen[key], out.numel())
        return record

    handles = [student.lm_head.register_forward_hook(hook("student")),
               teacher.lm_head.register_forward_hook(hook("teacher"))]
    try:
        loss_fn(*args).backward()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("retain", [1.0, 0.5])
def test_logits_alive_with_grad_are_one_chunk(setup, retain):
    """Analytic peak of the differentiable part: ``CHUNK x V`` for tiplight, ``R x L x V`` for naive."""
    student, teacher, ids, mask = setup
    keep = keep_mask(retain)
    ours = largest_logits(tiplight_loss, student, teacher, ids, mask, keep)
    naive = largest_logits(naive_loss, student, teacher, ids, mask, keep)
    assert ours["student_grad"] == CHUNK * V  # one chunk recomputed with grad, whatever is kept
    assert ours["student_nograd"] <= CHUNK * V and ours["teacher"] <= CHUNK * V  # stats and teacher chunked
    assert naive["student_grad"] == naive["teacher"] == R * (P + C) * V
    assert ours["student_grad"] * R * C // CHUNK <= naive["student_grad"]


def saved_for_backward(loss_fn, *args) -> tuple[int, int]:
    """(elements saved for backward in ``[*, V]`` tensors, all elements saved) while building the graph."""
    sizes = []

    def pack(t):
        sizes.append((t.shape[-1] if t.dim() else 0, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(*args)
    return sum(n for last, n in sizes if last == V), sum(n for _, n in sizes)


def test_saved_tensors_have_no_vocabulary_dimension(setup):
    """The graph keeps hidden states only; naive keeps several fp32 ``[R, C, V]`` tensors."""
    student, teacher, ids, mask = setup
    full, half = keep_mask(1.0), keep_mask(0.5)
    ours_full, ours_total = saved_for_backward(tiplight_loss, student, teacher, ids, mask, full)
    ours_half, ours_half_total = saved_for_backward(tiplight_loss, student, teacher, ids, mask, half)
    naive_v, naive_total = saved_for_backward(naive_loss, student, teacher, ids, mask, full)
    assert ours_full == ours_half == 0
    assert naive_v >= 3 * R * C * V  # logits (all positions), log-softmax, probabilities, ...
    assert ours_half_total < ours_total < naive_total / 3  # weights and backbone activations remain
