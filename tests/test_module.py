"""The LightningModule on tiny models: a real step, a frozen teacher, exact resume, export, bad input."""

import pytest
import torch
from helpers import make_data, make_module, make_trainer
from transformers import AutoModelForCausalLM

from tiplight.args import Memory, Optimization
from tiplight.models import LoRA
from tiplight.objectives import JSD, ForwardKL, ReverseKL
from tiplight.selection import SoftOrTopK


def student_params(module):
    return {k: v.detach().clone() for k, v in module.student.state_dict().items()}


def test_fit_trains_the_student_only(tiny, prompts_file, tmp_path):
    module = make_module(tiny, selector=SoftOrTopK(0.5))
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, make_data(prompts_file))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert 0.3 < metrics["train/kept_fraction"] <= 0.5
    for key in ("time/rollout", "time/score", "time/update", "train/entropy", "train/rkl",
                "train/completion_length", "quadrant/Q3_all", "quadrant/Q3_kept"):
        assert key in metrics
    record = module.last_step
    assert record.weights.shape == record.stats.valid.shape == record.rollout.completion_mask.shape
    assert torch.equal(record.stats.valid, record.rollout.completion_mask)
    assert ((record.weights > 0) <= record.stats.valid).all()
    teacher = module.teacher
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}
    assert not any(id(p) in optimized for p in teacher.parameters())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and all(k.startswith("student.") for k in state)


def test_student_changes_and_llama_student_works(tiny, prompts_file, tmp_path):
    module = make_module(tiny, student=tiny["llama"])
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, make_data(prompts_file))
    before = AutoModelForCausalLM.from_pretrained(tiny["llama"]).state_dict()
    after = module.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


class StopAt(__import__("lightning").Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("micro_batch_size", [None, 3])
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny, prompts_file, tmp_path, micro_batch_size):
    kwargs = dict(selector=SoftOrTopK(0.5), optimization=Optimization(lr_schedule="cosine", warmup_steps=1),
                  memory=Memory(micro_batch_size=micro_batch_size), lora=LoRA(r=4, alpha=8, dropout=0.1))
    straight = make_module(tiny, **kwargs)
    make_trainer(tmp_path / "a", max_steps=4).fit(straight, make_data(prompts_file))

    first = make_module(tiny, **kwargs)
    trainer = make_trainer(tmp_path / "b", max_steps=4, callbacks=[StopAt(2)])
    trainer.fit(first, make_data(prompts_file))
    assert trainer.global_step == 2
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    torch.manual_seed(1234)  # a resumed process starts with another RNG state
    resumed = make_module(tiny, **kwargs)
    make_trainer(tmp_path / "c", max_steps=4).fit(resumed, make_data(prompts_file), ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.next_batch == straight.next_batch == 4
    a, b = student_params(straight), student_params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], student_params(first)[k]) for k in a)


def test_export_merged_and_adapter(tiny, prompts_file, tmp_path):
    module = make_module(tiny, lora=LoRA(r=4, alpha=8))
    make_trainer(tmp_path, max_steps=1).fit(module, make_data(prompts_file))
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        want = module.student(input_ids=ids).logits
    module.export(str(tmp_path / "adapter"), merge=False)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    module.export(str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())
    # the model in training keeps its adapter after a merged export (a mid-run export changes nothing)
    assert any("lora" in k for k in module.student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module.student(input_ids=ids).logits, want, rtol=0, atol=0)


def test_validation_loss_is_logged(tiny, prompts_file, tmp_path):
    module = make_module(tiny)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0, val_check_interval=1)
    trainer.fit(module, make_data(prompts_file))
    assert torch.isfinite(trainer.callback_metrics["val/opd_loss"])


def test_empty_step_is_skipped_with_a_warning(tiny, prompts_file, tmp_path):
    from tiplight.selection import QuadrantSelector

    module = make_module(tiny, selector=QuadrantSelector(["Q1"], entropy_threshold=2.0))  # nothing qualifies
    trainer = make_trainer(tmp_path, max_steps=1, max_epochs=1, limit_train_batches=2)
    module.configure_model()  # the student exists before fit, so its weights can be compared after
    before = student_params(module)
    with pytest.warns(UserWarning, match="no token was kept"):
        trainer.fit(module, make_data(prompts_file))
    assert trainer.global_step == 0 and module.empty_steps == 2
    after = student_params(module)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_run_that_keeps_nothing_stops_with_one_sentence(tiny, prompts_file, tmp_path):
    from tiplight.selection import QuadrantSelector

    module = make_module(tiny, selector=QuadrantSelector(["Q1"], entropy_threshold=2.0),
                         optimization=Optimization(lr_schedule="constant", max_empty_steps=3))
    trainer = make_trainer(tmp_path, max_steps=5)  # skipped steps never reach max_steps
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"no token was kept in 3 consecutive steps"):
        trainer.fit(module, make_data(prompts_file))


@pytest.mark.parametrize("kwargs,message", [
    (dict(student="/no/such/model"), r"model.student='/no/such/model' could not be loaded"),
])
def test_bad_module_input_is_one_clear_error(tiny, prompts_file, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        module = make_module(tiny, **kwargs)
        make_trainer(tmp_path, max_steps=1).fit(module, make_data(prompts_file))


@pytest.mark.parametrize("build,message", [
    (lambda: Memory(chunk_size=0), r"model.memory.chunk_size=0 is not allowed"),
    (lambda: Memory(micro_batch_size=0), r"model.memory.micro_batch_size=0 is not allowed"),
    (lambda: Memory(generation_batch_size=-1), r"model.memory.generation_batch_size=-1 is not allowed"),
    (lambda: Optimization(max_empty_steps=0), r"model.optimization.max_empty_steps=0 is not allowed"),
])
def test_bad_option_group_values_are_one_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("field", ["model.student", "model.tokenizer"])
def test_mismatched_tokenizers_fail_at_start(tiny, prompts_file, tmp_path, field):
    """Also when model.tokenizer is set: the teacher is checked against the run's tokenizer in every case."""
    import shutil

    from conftest import build_tokenizer

    other = tmp_path / "teacher"
    shutil.copytree(tiny["teacher"], other)
    build_tokenizer(other, extra=["@"])
    tokenizer = tiny["tokenizer"] if field == "model.tokenizer" else None
    module = make_module(tiny, teacher=str(other), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=f"model.teacher and {field} use different tokenizers"):
        make_trainer(tmp_path, max_steps=1).fit(module, make_data(prompts_file))


def naive_step_loss(module, record, divergence):
    """The loss from full logits of both models over the whole rollout, masked by the kept weights."""
    r = record.rollout
    mask = r.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        s = module.student(input_ids=r.input_ids, attention_mask=mask, position_ids=pos).logits
        t = module.teacher(input_ids=r.input_ids, attention_mask=mask, position_ids=pos).logits
    span = slice(r.prompt_length - 1, r.input_ids.shape[1] - 1)
    v = module.vocab_size
    per_token = divergence.loss(s[:, span, :v].flatten(0, 1), t[:, span, :v].flatten(0, 1)).view_as(record.weights)
    return per_token, record.weights


@pytest.mark.parametrize("kwargs", [
    dict(selector=SoftOrTopK(0.5)),
    dict(selector=SoftOrTopK(0.5), stats_scope="micro", memory=Memory(micro_batch_size=3)),
    dict(objective=ReverseKL(denominator="valid"), memory=Memory(micro_batch_size=2)),
    dict(objective=JSD(0.3)),
    dict(objective=ForwardKL(), memory=Memory(chunk_size=3)),
])
def test_logged_loss_equals_the_direct_formula(tiny, prompts_file, tmp_path, kwargs):
    module = make_module(tiny, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), **kwargs)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, make_data(prompts_file))
    per_token, weights = naive_step_loss(module, module.last_step, module.objective)
    valid = module.objective.denominator == "valid"
    denominator = module.last_step.stats.valid.sum() if valid else (weights > 0).sum()
    expected = (per_token * weights).sum() / denominator
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], expected, rtol=1e-4, atol=1e-6)
    if kwargs.get("stats_scope") == "micro":  # each micro-batch of 3 rollouts keeps its own top half
        for rows in (slice(0, 3), slice(3, 6), slice(6, 8)):
            kept = (weights[rows] > 0).sum(1)
            assert torch.equal(kept, module.last_step.stats.valid[rows].sum(1) // 2)


def test_importance_weighted_entropy_sampling_trains(tiny, prompts_file, tmp_path):
    from tiplight.selection import EntropySampling

    module = make_module(tiny, selector=EntropySampling(0.5, importance_weights=True),
                         objective=ReverseKL(denominator="valid"))
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(module, make_data(prompts_file))
    weights = module.last_step.weights
    assert (weights[weights > 0] >= 1).all() and torch.isfinite(trainer.callback_metrics["train/loss"])
