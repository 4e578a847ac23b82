"""Completions for evaluation callbacks (``MathEvalCallback``): prompts formatted and encoded exactly as
the data module formats training prompts, sampled with the module's rollout engine; and episodes of the
module's environment, rendered as training renders them."""

from __future__ import annotations

from typing import Any

import torch

from tiplight.data import Prompt, PromptDataModule, collate, encode_prompt, format_prompt
from tiplight.envs.loop import AgentRollout
from tiplight.envs.training import episode_batch, sample_episodes
from tiplight.rollout import Sampling


def _datamodule(module: Any) -> PromptDataModule | None:
    """The module's ``PromptDataModule`` once set up (it owns prompt formatting), else None."""
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer else None
    ready = isinstance(datamodule, PromptDataModule) and datamodule.tokenizer is not None
    return datamodule if ready else None


def prompt_text(module: Any, problem: str, instruction: str | None = None) -> str:
    """``problem`` as the model sees training prompts (the data module's chat template and kwargs)."""
    datamodule = _datamodule(module)
    if datamodule is not None:
        return datamodule.format_prompt(problem, instruction)
    return format_prompt(module.tokenizer, problem, instruction)


@torch.no_grad()
def generate_completions(module: Any, prompts: list[str], *, num_samples: int = 1, temperature: float = 0.0,
                         top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 256,
                         seed: int = 0) -> list[list[str]]:
    """``num_samples`` completion texts per formatted prompt (special tokens stripped), from the student of
    ``module`` (a ``DistillModule``) with its engine; sampling comes from these arguments alone."""
    datamodule = _datamodule(module)
    encode = datamodule.encode if datamodule is not None else lambda p: encode_prompt(module.tokenizer, p)
    encoded = [Prompt(str(i), p, encode(p), "") for i, p in enumerate(prompts)]
    batch = collate(encoded, module.tokenizer.pad_token_id, num_samples, 0)
    rollout = module.rollout(batch, Sampling(temperature, top_p, top_k, max_new_tokens), seed)
    texts = [module.tokenizer.decode(ids[mask], skip_special_tokens=True)
             for ids, mask in zip(rollout.completion_ids, rollout.completion_mask)]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


@torch.no_grad()
def generate_episodes(module: Any, problems: list[dict[str, Any]], *, num_samples: int = 1, temperature: float = 0.0,
                      top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 256, seed: int = 0,
                      first_key: int = 0) -> AgentRollout:
    """``num_samples`` episodes of each problem of ``module.environment`` (a ``DistillModule``'s), episode j
    of problem i keyed ``first_key + i * num_samples + j``; turns are rendered with the data module's
    chat-template kwargs and sampled under these arguments alone (``max_new_tokens``: the longest turn)."""
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer else None
    batch = episode_batch(problems, num_samples, first_key, getattr(datamodule, "template_kwargs", None))
    return sample_episodes(module.engine, module.student, module.tokenizer, module.environment, batch,
                           sampling=Sampling(temperature, top_p, top_k, max_new_tokens), seed=seed,
                           vocab_size=module.vocab_size, batch_size=module.memory.generation_batch_size,
                           synced=module.sharded)
