"""Tiny Qwen3 models for the toy world and their supervised (SFT) training loop.

Plain next-token loss on prompt + solution + EOS, counted on the solution tokens only. Everything is
seeded, and the order of training problems is a fixed function of the seed, so a build is repeatable
on the same machine and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from tiplight.padding import right_pad
from tiplight.schedule import lr_factor


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a tiny Qwen3 (untied heads would double the small embedding; tied is enough)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384


@dataclass(frozen=True)
class SFTSpec:
    """Supervised schedule: AdamW, linear warm-up then cosine decay to ``min_lr_frac * lr``."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    min_lr_frac: float = 0.05
    weight_decay: float = 0.01


def make_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int) -> Qwen3ForCausalLM:
    """A randomly initialised tiny ``Qwen3ForCausalLM`` sized for ``tokenizer``'s vocabulary."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=256,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Eager attention: at these sizes it is faster on CPU than SDPA and bitwise repeatable.
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def sft_batch(problems: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``[B, T]``; labels only on solution + EOS."""
    rows, label_rows = [], []
    for p in problems:
        prompt = tokenizer(p["prompt"]).input_ids  # starts with BOS
        target = [*tokenizer(p["solution"], add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        rows.append(prompt + target)
        label_rows.append([-100] * len(prompt) + target)
    return {"input_ids": right_pad(rows, tokenizer.pad_token_id),  # [B, T] each
            "attention_mask": right_pad([[1] * len(r) for r in rows], 0), "labels": right_pad(label_rows, -100)}


def _shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices into ``n`` items: a seeded permutation per pass, its ragged end dropped."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for i in range(0, max(n - batch_size, 0) + 1, batch_size):  # n < batch_size: every item, once
            yield order[i : i + batch_size]


def train_sft(
    model: Qwen3ForCausalLM,
    problems: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    spec: SFTSpec,
    *,
    seed: int,
    log_every: int = 250,
    log: Callable[[str], object] = print,
    hook: Callable[[int], str] | None = None,
    batch_fn: Callable[[list[dict], PreTrainedTokenizerBase], dict[str, torch.Tensor]] = sft_batch,
) -> dict:
    """Train ``model`` in place on ``problems`` (cycled in a seeded order); returns loss and time.

    ``hook(step)`` runs every ``log_every`` steps (e.g. a quick accuracy probe); its text joins the log line.
    ``batch_fn`` turns problems into ``input_ids`` / ``attention_mask`` / ``labels`` (default: ``sft_batch``).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.95))
    model.train()
    start, running = time.perf_counter(), float("nan")
    for step, indices in zip(range(spec.steps), _shuffled_batches(len(problems), spec.batch_size, seed)):
        batch = batch_fn([problems[i] for i in indices], tokenizer)
        for group in opt.param_groups:
            group["lr"] = spec.lr * lr_factor(step, schedule="cosine", warmup_steps=spec.warmup,
                                              total_steps=spec.steps, min_lr_ratio=spec.min_lr_frac)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
        if log_every and (step + 1) % log_every == 0:
            extra = f" {hook(step + 1)}" if hook else ""
            log(f"  step {step + 1}/{spec.steps} loss {running:.4f} ({time.perf_counter() - start:.0f}s){extra}")
            model.train()
    model.eval()
    return {"final_loss": running, "seconds": time.perf_counter() - start, "steps": spec.steps}
