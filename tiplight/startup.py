"""What a DistillModule does before its first step: load the tokenizer and the models, checked against each
other, and refuse a run whose options cannot work together (one sentence each)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from tiplight.envs.training import EpisodeDataModule
from tiplight.models import (
    LoRA,
    ModelSource,
    Quantization,
    check_chat_format,
    check_teacher_tokenizer,
    freeze,
    load_model,
    load_student,
    load_tokenizer,
    vocab_size,
)
from tiplight.optimizers import check_resumed_optimizer
from tiplight.parallel import parallelize
from tiplight.rollout import eos_token_ids
from tiplight.sources import resolve


def check_quantized_student(quantization: Quantization | None, lora: LoRA | None) -> None:
    """A quantized student trains only through a LoRA adapter (QLoRA)."""
    if quantization is not None and lora is None:
        raise ValueError("model.student_quantization is set but model.lora is not; a quantized student "
                         "trains only through a LoRA adapter (QLoRA): set model.lora.")


def load_models(module: L.LightningModule) -> None:
    """The tokenizer, the student (trainable, in train mode) and the teacher (local and frozen, or served),
    the vocabulary both share, then the models sharded for the trainer's strategy."""
    hp = module.hparams
    module.tokenizer = load_tokenizer(module.tokenizer_source, module.tokenizer_field)
    device = module.trainer.strategy.root_device if module._trainer is not None else None
    student = load_student(ModelSource(resolve(hp.student), hp.dtype, module.student_quantization), module.lora,
                           seed=module.seed, gradient_checkpointing=module.memory.gradient_checkpointing,
                           device=device)
    local = []
    if module.served_teacher is not None:
        module.vocab_size = vocab_size(module.tokenizer, student)
        module.served_teacher.connect(module.tokenizer, module.vocab_size, device, hp.allow_template_mismatch)
        module.__dict__["_teacher"] = module.served_teacher
    elif hp.get("teacher") is not None:
        local = [load_teacher(module, student, device)]
        module.__dict__["_teacher"] = local[0]
    module.vocab_size = vocab_size(module.tokenizer, student, *local)
    module.student = student.train()  # from_pretrained returns eval mode; LoRA/dropout must train
    parallelize(module, student, local[0] if local else None)


def load_teacher(module: L.LightningModule, student: nn.Module, device: torch.device | None) -> nn.Module:
    """The local teacher, frozen, after checking that its tokenizer and chat format match the student's."""
    hp = module.hparams
    teacher_tokenizer = check_teacher_tokenizer(module.tokenizer, resolve(hp.teacher), module.tokenizer_field)
    source = ModelSource(resolve(hp.teacher), hp.teacher_dtype or hp.dtype, module.teacher_quantization)
    teacher = freeze(load_model(source, "model.teacher", device))
    if teacher_tokenizer is not None:
        check_chat_format((module.tokenizer, eos_token_ids(module.tokenizer, student)),
                          (teacher_tokenizer, eos_token_ids(teacher_tokenizer, teacher)),
                          module.tokenizer_field, hp.allow_template_mismatch)
    return teacher


def check_fit(module: L.LightningModule) -> None:
    """Refuse a `fit` whose options cannot work together, before its first step."""
    trainer = module.trainer
    check_resumed_optimizer(module.resumed_optimizer, trainer.optimizers)
    if module.teacher is None:
        raise ValueError("model.teacher is not set; `fit` distils from a teacher: give its hub id or directory.")
    if module.optimization.lr_schedule == "cosine" and trainer.max_steps < 1:
        raise ValueError("trainer.max_steps is not set; the cosine LR schedule needs it (or use "
                         "model.optimization.lr_schedule: constant).")
    if module.environment is not None and not isinstance(trainer.datamodule, EpisodeDataModule):
        raise ValueError(f"model.environment is set but data is {type(trainer.datamodule).__name__}; "
                         "episodes need data: tiplight.envs.EpisodeDataModule (or drop model.environment).")
    if module.served_teacher is not None:  # +1: vLLM answers prompt log-probabilities with one new token
        module.served_teacher.check_length(*longest_sequence(module))


def longest_sequence(module: L.LightningModule) -> tuple[int, str]:
    """The most tokens a served teacher is asked to score (+1, the token vLLM adds), and where it is set."""
    if module.environment is not None:
        return module.environment.max_tokens + 1, "model.environment.init_args.max_tokens + 1"
    prompt = getattr(getattr(module.trainer.datamodule, "hparams", None), "max_prompt_tokens", 0)
    field = "val_sampling" if module.val_sampling.max_new_tokens > module.sampling.max_new_tokens else "sampling"
    new = getattr(module, field).max_new_tokens
    return prompt + new + 1, f"data.max_prompt_tokens + model.{field}.max_new_tokens + 1"
