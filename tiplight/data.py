"""Prompts from JSONL files: formatting (chat template), length limits, and the per-step prompt stream.

Training draws an endless, seeded stream of prompt batches; batch ``b`` is a pure function of
``(seed, b)``, so a resumed run continues with exactly the batch it would have seen, and every rank
takes its contiguous slice of the same global batch (selection then does not depend on the rank count).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset
from transformers import PreTrainedTokenizerBase

from tiplight.models import load_tokenizer
from tiplight.padding import left_pad
from tiplight.seeding import mixed_seed, resolve_seed
from tiplight.sources import load_source


@dataclass(frozen=True)
class Prompt:
    """One formatted prompt: model input ids, the gold answer (may be empty) and an id."""

    id: str
    text: str
    input_ids: list[int]
    answer: str


def read_rows(source: str, field: str) -> list[dict[str, Any]]:
    """Prompt rows of a JSONL file, a ``tiplight:`` packaged file, or a named source (``math_train``)."""
    return load_source(source, (field,), "data.prompt_field")


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    problem: str,
    instruction: str | None = None,
    chat_template: bool = True,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The text given to the model: problem plus instruction, through the chat template if there is one."""
    content = f"{problem}\n{instruction}" if instruction else problem
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            **(template_kwargs or {}),
        )
    return content


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, chat_template: bool = True) -> list[int]:
    """Token ids of a formatted prompt. A chat template writes its own special tokens; plain text gets the
    tokenizer's (e.g. BOS), as the model saw in its own training."""
    templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def collate(prompts: list[Prompt], pad_id: int, rollouts_per_prompt: int, first_key: int) -> dict[str, Any]:
    """A batch of prompts, each repeated ``rollouts_per_prompt`` times; ``keys`` name every rollout."""
    repeated = [p for p in prompts for _ in range(rollouts_per_prompt)]
    ids, mask = left_pad([p.input_ids for p in repeated], pad_id)
    keys = torch.arange(first_key, first_key + len(repeated), dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "keys": keys,
        "answers": [p.answer for p in repeated],
        "ids": [p.id for p in repeated],
    }


class PromptStream(IterableDataset):
    """Endless prompt batches for one rank: batch ``b`` is slice ``rank`` of global batch ``b``."""

    def __init__(self, prompts: list[Prompt], prompts_per_step: int, rollouts_per_prompt: int, pad_id: int,
                 seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.prompts, self.per_step, self.g, self.pad_id = prompts, prompts_per_step, rollouts_per_prompt, pad_id
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size

    def global_indices(self, batch: int) -> list[int]:
        """Prompt indices of global batch ``batch``: consecutive slices of seeded per-epoch permutations."""
        n, out = len(self.prompts), []
        position = batch * self.per_step
        while len(out) < self.per_step:
            epoch, offset = divmod(position, n)
            order = list(range(n))
            random.Random(mixed_seed(self.seed, epoch)).shuffle(order)
            take = order[offset : offset + self.per_step - len(out)]
            out += take
            position += len(take)
        return out

    def make_batch(self, items: list[Prompt], first_key: int) -> dict[str, Any]:
        """The batch of ``items``, each repeated ``rollouts_per_prompt`` times, keys from ``first_key``."""
        return collate(items, self.pad_id, self.g, first_key)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        local = self.per_step // self.world_size
        batch = self.start
        while True:
            indices = self.global_indices(batch)[self.rank * local : (self.rank + 1) * local]
            first_key = (batch * self.per_step + self.rank * local) * self.g
            out = self.make_batch([self.prompts[i] for i in indices], first_key)
            out["batch_index"] = batch
            yield out
            batch += 1


def check_sizes(val_size: int, **at_least_one: int) -> None:
    """One sentence for a data size out of range: ``val_size`` may be 0, the others must be >= 1."""
    for name, value in at_least_one.items():
        if value < 1:
            raise ValueError(f"data.{name}={value} is not allowed; use an integer >= 1.")
    if val_size < 0:
        raise ValueError(f"data.val_size={val_size} is not allowed; use an integer >= 0.")


class PromptDataModule(L.LightningDataModule):
    """Prompts for on-policy distillation.

    Args:
        train_files: JSONL files of training prompts.
        val_files: JSONL files of held-out prompts; when empty, ``val_size`` prompts are held out of training.
        val_size: number of training prompts held out for the validation OPD loss (fixed seed).
        prompt_field / answer_field / id_field: field names in the JSONL rows.
        instruction: text appended to every problem (e.g. "Put your final answer within \\boxed{}.").
        chat_template: apply the tokenizer's chat template when it has one.
        chat_template_kwargs: passed to ``apply_chat_template`` (e.g. ``{enable_thinking: false}``).
        max_prompt_tokens: longest prompt; longer ones are truncated or skipped (``overlong``).
        prompts_per_step: prompts per optimizer step over all ranks.
        rollouts_per_prompt: samples per prompt (G).
        val_batch_size: prompts per validation batch on each rank.
        tokenizer: tokenizer id or directory; defaults to the module's (``model.tokenizer`` or the student).
        seed: seed of the prompt order and of the held-out split (default: ``seed_everything``).
    """

    def __init__(
        self,
        train_files: list[str],
        val_files: list[str] | None = None,
        val_size: int = 0,
        prompt_field: str = "problem",
        answer_field: str | None = "answer",
        id_field: str | None = "id",
        instruction: str | None = None,
        chat_template: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_prompt_tokens: int = 2048,
        overlong: Literal["truncate", "skip"] = "truncate",
        prompts_per_step: int = 8,
        rollouts_per_prompt: int = 4,
        val_batch_size: int = 8,
        tokenizer: str | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        check_sizes(val_size, prompts_per_step=prompts_per_step, rollouts_per_prompt=rollouts_per_prompt,
                    max_prompt_tokens=max_prompt_tokens, val_batch_size=val_batch_size)
        # not merged into the logged hparams: keys shared with the module (seed, tokenizer) may differ
        self.save_hyperparameters(logger=False)
        self.seed = resolve_seed(seed)
        self.train_prompts: list[Prompt] = []
        self.val_prompts: list[Prompt] = []
        self.counts = {"truncated": 0, "skipped": 0}
        self.tokenizer: PreTrainedTokenizerBase | None = None

    # --- formatting -------------------------------------------------------------------------------
    def format_prompt(self, problem: str, instruction: str | None = None) -> str:
        """``problem`` formatted exactly as training prompts are (template and template kwargs)."""
        hp = self.hparams
        return format_prompt(self.tokenizer, problem, instruction, hp.chat_template, hp.chat_template_kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of a formatted prompt (special tokens as ``encode_prompt`` decides)."""
        return encode_prompt(self.tokenizer, text, self.hparams.chat_template)

    def make_prompt(self, row: dict[str, Any], index: int) -> Prompt | None:
        """Format and tokenize one row; applies the prompt-length policy (None: skipped)."""
        hp = self.hparams
        problem = str(row[hp.prompt_field])
        text = self.format_prompt(problem, hp.instruction)
        ids = self.encode(text)
        if len(ids) > hp.max_prompt_tokens:
            if hp.overlong == "skip":
                self.counts["skipped"] += 1
                return None
            self.counts["truncated"] += 1
            text, ids = self.truncate(problem, len(ids) - hp.max_prompt_tokens)
        answer = str(row.get(hp.answer_field, "")) if hp.answer_field else ""
        pid = str(row.get(hp.id_field, index)) if hp.id_field else str(index)
        return Prompt(pid, text, ids, answer)

    def truncate(self, problem: str, excess: int) -> tuple[str, list[int]]:
        """Cut the end of the problem (keeping template and instruction) until the prompt fits."""
        hp = self.hparams
        problem_ids = self.tokenizer(problem, add_special_tokens=False)["input_ids"]
        keep = max(len(problem_ids) - excess, 0)
        while True:
            text = self.format_prompt(self.tokenizer.decode(problem_ids[:keep]), hp.instruction)
            ids = self.encode(text)
            if len(ids) <= hp.max_prompt_tokens or keep == 0:
                break
            keep = max(keep - (len(ids) - hp.max_prompt_tokens), 0)
        if len(ids) > hp.max_prompt_tokens:
            raise ValueError(
                f"data.max_prompt_tokens={hp.max_prompt_tokens} is shorter than the template and instruction "
                f"alone ({len(ids)} tokens); raise it."
            )
        return text, ids

    def load(self, files: list[str]) -> list[Prompt]:
        rows = [row for f in files for row in read_rows(f, self.hparams.prompt_field)]
        prompts = [p for i, row in enumerate(rows) if (p := self.make_prompt(row, i)) is not None]
        return prompts

    # --- Lightning hooks --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            module = self.trainer.lightning_module
            if self.hparams.tokenizer:
                self.tokenizer = load_tokenizer(self.hparams.tokenizer, "data.tokenizer")
            else:
                self.tokenizer = load_tokenizer(module.tokenizer_source, module.tokenizer_field)
        hp = self.hparams
        prompts = self.load(list(hp.train_files))
        if not prompts:
            raise ValueError(f"data.train_files={list(hp.train_files)} hold no usable prompt (empty, or all skipped).")
        if hp.val_files:
            self.val_prompts = self.load(list(hp.val_files))
        elif hp.val_size:
            order = list(range(len(prompts)))
            random.Random(self.seed).shuffle(order)
            held = set(order[: hp.val_size])
            self.val_prompts = [prompts[i] for i in sorted(held)]
            prompts = [p for i, p in enumerate(prompts) if i not in held]
        if not prompts:
            raise ValueError(f"data.val_size={hp.val_size} leaves no training prompt; lower it.")
        self.train_prompts = prompts
        rank_zero_info(
            f"tiplight data: {len(self.train_prompts)} training and {len(self.val_prompts)} validation prompts; "
            f"{self.counts['truncated']} truncated and {self.counts['skipped']} skipped "
            f"(longer than data.max_prompt_tokens={hp.max_prompt_tokens})."
        )

    def train_dataloader(self) -> DataLoader:
        hp, trainer = self.hparams, self.trainer
        if hp.prompts_per_step % trainer.world_size:
            raise ValueError(
                f"data.prompts_per_step={hp.prompts_per_step} does not split over {trainer.world_size} ranks; "
                "use a multiple of the number of processes."
            )
        start = getattr(trainer.lightning_module, "next_batch", 0)
        stream = PromptStream(self.train_prompts, hp.prompts_per_step, hp.rollouts_per_prompt,
                              self.tokenizer.pad_token_id, self.seed, start, trainer.global_rank, trainer.world_size)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        """This rank's contiguous share of the validation prompts, each rollout keyed by its prompt's index in
        the whole set: a prompt's rollout, and so the validation loss, does not depend on the number of ranks."""
        prompts, pad_id = self.val_prompts, self.tokenizer.pad_token_id
        return rank_share_loader(len(prompts), self.hparams.val_batch_size, self.trainer,
                                 lambda i, j: collate(prompts[i:j], pad_id, 1, i))


def share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (the first ``n % world_size``
    ranks take one more)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def rank_share_loader(n: int, batch_size: int, trainer: L.Trainer,
                      make: Callable[[int, int], dict[str, Any]]) -> DataLoader:
    """This rank's contiguous share of ``n`` items as ready-made batches ``make(i, j)`` of items ``[i, j)``:
    item ``i`` keeps its index in the whole set whatever the number of ranks."""
    start, stop = share(n, trainer.global_rank, trainer.world_size)
    batches = [make(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)]
    return DataLoader(_Batches(batches), batch_size=None)


class _Batches(IterableDataset):
    """Ready-made batches (iterable, so Lightning does not re-shard what is already sharded by rank)."""

    def __init__(self, batches: list[dict[str, Any]]):
        super().__init__()
        self.batches = batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)
