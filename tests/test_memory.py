"""Memory regression tests on analytic quantities (GitHub issue 6), not on timings.

On a tiny Qwen3 (vocabulary much larger than the hidden size, so logits dominate) the tiplight step
(`completion_hidden` -> `token_stats_and_loss` -> `selected_loss_sum`) is compared with the naive step
that materialises full ``[R, L, V]`` logits with grad and masks afterwards:
- gradients of every student parameter agree (full fine-tuning and a LoRA student with a frozen head);
- no tensor with a vocabulary dimension ever requires grad on the tiplight path, the largest one is one
  chunk; naive has all positions' logits with grad;
- autograd saves no ``[*, V]`` tensor on the tiplight path, only the backbone's activations.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import Qwen3Config, Qwen3ForCausalLM

from tiplight import losses
from tiplight.chunked_stats import completion_hidden, position_ids, token_stats_and_loss
from tiplight.objective import selected_loss_sum
from tiplight.objectives import ReverseKL

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
    _, token_loss = token_stats_and_loss(hidden, s_head, t_hidden, t_head, torch.ones_like(keep), V, CHUNK,
                                         ReverseKL(), grad=True)
    return selected_loss_sum(hidden[keep], t_hidden[keep], torch.ones(int(keep.sum())), s_head, t_head,
                             ReverseKL(), V, CHUNK, token_loss.at(keep)) / keep.sum()


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
    return [p.grad.clone() for p in student.parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def lora_student():
    """A LoRA student (peft, every linear layer but the lm_head): its head and tied embeddings are frozen."""
    from tiplight.models import LoRA, add_lora

    torch.manual_seed(3)
    student = add_lora(tiny_qwen3(0), LoRA(r=4, alpha=8), quantized=False)
    for name, p in student.named_parameters():  # peft initialises B to 0: make the adapter matter
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    return student


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("retain", [1.0, 0.5])
def test_step_gradients_equal_naive(setup, lora_student, retain, lora):
    student, teacher, ids, mask = setup
    student = lora_student if lora else student
    keep = keep_mask(retain)
    got, want = (grads(student, f, teacher, ids, mask, keep) for f in (tiplight_loss, naive_loss))
    assert len(got) == len(want) == sum(p.requires_grad for p in student.parameters())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class VocabTensors(TorchFunctionMode):
    """Largest tensor with a vocabulary (last) dimension that any torch function returns, with and without
    grad (forward, and recomputations in backward). Views (``weight.T``, slices of a reused buffer) hold
    no memory of their own and are not counted; flat ``[n * V]`` scratch buffers are."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = {True: 0, False: 0}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or not t.dim() or t._base is not None:
                continue
            if t.shape[-1] == V or (t.dim() == 1 and t.numel() % V == 0):
                self.largest[t.requires_grad] = max(self.largest[t.requires_grad], t.numel())
        return out


def largest_vocab_tensors(loss_fn, *args) -> dict[bool, int]:
    with VocabTensors() as seen:
        loss_fn(*args).backward()
    return seen.largest


@pytest.mark.parametrize("retain", [1.0, 0.5])
def test_no_logits_with_grad_and_one_chunk_without(setup, retain):
    """Analytic peak: no ``[*, V]`` tensor with grad, ``CHUNK x V`` without, for tiplight; ``R x L x V``
    logits with grad for naive."""
    student, teacher, ids, mask = setup
    keep = keep_mask(retain)
    ours = largest_vocab_tensors(tiplight_loss, student, teacher, ids, mask, keep)
    naive = largest_vocab_tensors(naive_loss, student, teacher, ids, mask, keep)
    assert ours[True] == 0 and 0 < ours[False] <= CHUNK * V
    assert naive[True] >= R * (P + C) * V


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
    assert ours_half_total == ours_total < naive_total / 3  # backbone activations only, whatever is kept
