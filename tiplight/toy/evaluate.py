"""Greedy accuracy of a toy model on toy problems (batched HF ``generate``, left padding)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (no nested braces in the toy world), or None."""
    found = _BOXED.findall(text)
    return found[-1].strip() if found else None


def is_correct(response: str, gold: str) -> bool:
    """Whether ``response`` answers ``gold`` (``tiplight.evals.grade``)."""
    from tiplight.evals import grade

    return bool(grade(response, gold))


def _load(model: PreTrainedModel | str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """A model (loaded from a directory when given a path) and the tokenizer found beside it, if any."""
    if isinstance(model, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(model)
        return AutoModelForCausalLM.from_pretrained(model), tokenizer
    return model, None


@torch.inference_mode()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    batch_size: int = 100,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy completions (decoded, special tokens dropped) for ``prompts``."""
    tokenizer.padding_side = "left"  # generation appends on the right
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
        ids = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # [b, P + C]
        out += tokenizer.batch_decode(ids[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return out


def accuracy(
    model: PreTrainedModel | str | Path,
    problems: list[dict],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 100,
    max_new_tokens: int = 64,
) -> float:
    """Fraction of ``problems`` whose greedy completion is graded correct against ``answer``.

    Args:
        model: a loaded causal LM or an HF directory holding model and tokenizer (e.g. ``teacher_dir()``).
        problems: toy problems (``prompt`` and ``answer`` keys).
        tokenizer: needed when ``model`` is an object; defaults to the shipped toy tokenizer.
    """
    model, found = _load(model)
    if tokenizer is None:
        from tiplight.toy import tokenizer_dir

        tokenizer = found or AutoTokenizer.from_pretrained(tokenizer_dir())
    was_training = model.training
    model.eval()
    responses = generate_responses(
        model,
        tokenizer,
        [p["prompt"] for p in problems],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    model.train(was_training)
    hits = sum(is_correct(r, p["answer"]) for r, p in zip(responses, problems))
    return hits / max(1, len(problems))
