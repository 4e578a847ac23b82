"""A DistillModule step's gradient equals the naive full-logit reference, for every trained parameter.

The naive reference runs both models over the whole rollout with full ``[R, L, V]`` logits, the student's
with grad, and takes the divergence at every completion position times the step's weights, divided by
the step's denominator. It covers the three paths of ``tiplight.objective.selected_loss_sum``: a LoRA
student (frozen head: gradient from the statistics pass, no vocabulary pass in the update), full
fine-tuning (closed-form head gradient over kept tokens; tied embeddings too) and a custom divergence
(autograd); with each divergence, importance weights, chunk sizes, micro-batches and both denominators.
"""

import pytest
import torch
from helpers import make_data, make_module, make_trainer

from tiplight.args import Memory, Optimization
from tiplight.models import LoRA
from tiplight.objectives import JSD, ForwardKL, ReverseKL
from tiplight.selection import EntropySampling, SoftOrTopK


def naive_grads(module, divergence, denominator: str) -> list[torch.Tensor]:
    """Gradients of the naive loss at the last step's rollout and weights (parameters as they were)."""
    record = module.last_step
    r, weights = record.rollout, record.weights
    mask = r.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        t = module.teacher(input_ids=r.input_ids, attention_mask=mask, position_ids=pos).logits
    s = module.student(input_ids=r.input_ids, attention_mask=mask, position_ids=pos).logits  # [R, L, V] with grad
    span, v = slice(r.prompt_length - 1, r.input_ids.shape[1] - 1), module.vocab_size
    per_token = divergence.loss(s[:, span, :v].flatten(0, 1), t[:, span, :v].flatten(0, 1)).view_as(weights)
    n = record.stats.valid.sum() if denominator == "valid" else (weights > 0).sum()
    params = [p for p in module.student.parameters() if p.requires_grad]
    return list(torch.autograd.grad((per_token * weights).sum() / n, params))


class CustomReverseKL(ReverseKL):
    """Reverse KL without a closed form (a plugin's divergence): the autograd path serves it."""

    def closed_form(self, context=None):
        return None


LORA = LoRA(r=4, alpha=8)
CASES = {
    "full": dict(selector=SoftOrTopK(0.5)),
    "lora": dict(selector=SoftOrTopK(0.5), lora=LORA),
    "lora_forward_kl_micro_chunk3": dict(selector=SoftOrTopK(0.3), lora=LORA, objective=ForwardKL(),
                                         memory=Memory(micro_batch_size=3, chunk_size=3)),
    "full_jsd_valid_micro": dict(selector=SoftOrTopK(0.5), objective=JSD(0.3, denominator="valid"),
                                 memory=Memory(micro_batch_size=2)),
    "lora_importance_valid": dict(selector=EntropySampling(0.5, importance_weights=True), lora=LORA,
                                  objective=ReverseKL(denominator="valid"), memory=Memory(chunk_size=5)),
    "full_importance_micro_scope": dict(selector=EntropySampling(0.5, importance_weights=True),
                                        stats_scope="micro", memory=Memory(micro_batch_size=3), objective=ForwardKL()),
    "full_custom_micro": dict(selector=SoftOrTopK(0.5), memory=Memory(micro_batch_size=3)),
    "lora_custom": dict(selector=SoftOrTopK(0.5), lora=LORA),
}


@pytest.mark.parametrize("case", list(CASES))
def test_step_gradient_equals_naive(tiny, prompts_file, tmp_path, case):
    kwargs = CASES[case]
    module = make_module(tiny, optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
                         optimization=Optimization(lr_schedule="constant", grad_clip=None), **kwargs)
    if "custom" in case:
        module.objective = CustomReverseKL()
    make_trainer(tmp_path, max_steps=1).fit(module, make_data(prompts_file))
    want = naive_grads(module, module.objective, module.objective.denominator)
    got = [p.grad for p in module.student.parameters() if p.requires_grad]
    assert len(got) == len(want) and all(g is not None for g in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if "lora" in case:  # frozen head: the statistics pass gave the gradient
        assert not module.student.get_output_embeddings().weight.requires_grad


def test_tied_student_gradient_equals_naive(tiny, prompts_file, tmp_path):
    """Full fine-tuning of a student whose lm_head is its input embedding: both uses reach one gradient."""
    from conftest import build_model, build_tokenizer

    student = build_model(tmp_path / "tied", hidden=32, seed=4, tie=True)
    build_tokenizer(student, chat_template=True)
    module = make_module(tiny, student=str(student), optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
                         optimization=Optimization(lr_schedule="constant", grad_clip=None), memory=Memory(chunk_size=4), selector=SoftOrTopK(0.5))
    make_trainer(tmp_path, max_steps=1).fit(module, make_data(prompts_file))
    assert module.student.get_output_embeddings().weight is module.student.get_input_embeddings().weight
    want = naive_grads(module, module.objective, "kept")
    got = [p.grad for p in module.student.parameters() if p.requires_grad]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class NonzeroLoRA(__import__("lightning").Callback):
    """peft starts LoRA's B at 0, which hides the dropout on A's input: give B values."""

    def on_train_start(self, trainer, module):
        for name, p in module.student.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p.data, std=0.1)


def test_recomputed_micro_batches_replay_the_scored_dropout(tiny, prompts_file, tmp_path, monkeypatch):
    """With micro-batches the update recomputes each student forward; with dropout it must draw the scored
    forward's masks, or the statistics pass's gradient would belong to other hidden states."""
    import tiplight.module
    import tiplight.passes

    seen = []

    def recording(model, *args):
        out = completion_hidden(model, *args)
        if model is module.student:
            seen.append(out.detach().clone())
        return out

    from tiplight.chunked_stats import completion_hidden

    module = make_module(tiny, selector=SoftOrTopK(0.5), lora=LoRA(r=4, alpha=8, dropout=0.5), memory=Memory(micro_batch_size=3))
    monkeypatch.setattr(tiplight.passes, "completion_hidden", recording)  # scoring
    monkeypatch.setattr(tiplight.module, "completion_hidden", recording)  # the update's recompute
    make_trainer(tmp_path, max_steps=1, callbacks=[NonzeroLoRA()]).fit(module, make_data(prompts_file))
    assert len(seen) == 6  # 3 micro-batches of 8 rollouts, scored then recomputed
    for a, b in zip(seen[:3], seen[3:], strict=True):
        assert torch.equal(a, b)
