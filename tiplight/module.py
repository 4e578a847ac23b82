"""The LightningModule: rollout -> score -> select -> loss, one optimizer step per rollout batch."""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from tiplight import losses
from tiplight.models import (
    LoRA,
    ModelSource,
    Quantization,
    add_lora,
    check_tokenizers,
    export_student,
    freeze,
    load_model,
    load_tokenizer,
    vocab_size,
)
from tiplight.objective import selected_loss_sum
from tiplight.parallel import all_gather_rows, clip_grad_norm, parallelize, sum_over_ranks
from tiplight.paths import resolve
from tiplight.rollout import HFGenerate, Rollout, RolloutEngine, Sampling, eos_token_ids, pad_right
from tiplight.selection import AllTokens, Selector, TokenStats, quadrant_shares, quadrants
from tiplight.stats import (
    RawStats,
    RngState,
    TokenLoss,
    completion_hidden,
    replay_rng,
    rng_state,
    token_stats_and_loss,
)

# hyperparameters in checkpoints hold these config dataclasses: let weights-only loading accept them
torch.serialization.add_safe_globals([LoRA, Quantization, Sampling])

DEFAULT_SAMPLING = Sampling()
STATS_SCOPES = ("batch", "micro")
DENOMINATORS = ("kept", "valid")
LR_SCHEDULES = ("cosine", "constant")


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.1)


@dataclass
class StepRecord:
    """The last training step on this rank, for diagnostics: its rollouts, their statistics (normalised
    over the stats scope) and the selector's weights (0 = not kept), all ``[R_local, C]``."""

    rollout: Rollout
    stats: TokenStats
    weights: torch.Tensor


@dataclass
class Scored:
    """One micro-batch after scoring: its rollout, teacher hidden states, raw stats (and student graph)."""

    rollout: Rollout
    teacher_hidden: torch.Tensor  # [r, C, d_t]
    raw: RawStats  # [r, C]
    student_hidden: torch.Tensor | None = None  # [r, C, d] with grad, when scoring and update share a pass
    token_loss: TokenLoss | None = None  # [r, C] loss (and [r, C, d] gradient) from the statistics pass
    rng: RngState | None = None  # before the student forward: a recompute replays its dropout masks


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name}={value!r} is not allowed; use one of {', '.join(allowed)}.")


class DistillModule(L.LightningModule):
    """On-policy distillation of a frozen teacher into a student, with pluggable token selection.

    Args:
        student: student model, HF hub id or local directory.
        teacher: teacher model (frozen), HF hub id or directory; only ``validate`` may run without one.
        selector: which completion positions carry the loss (any ``tiplight.selection.Selector``).
        tokenizer: tokenizer id or directory; defaults to the student's. The teacher's must match it.
        dtype / teacher_dtype: weight dtypes (float32, bfloat16, float16); the teacher's defaults to ``dtype``.
        student_quantization / teacher_quantization: bitsandbytes 4/8-bit loading (a quantized student
            needs ``lora``: QLoRA).
        lora: train a LoRA adapter instead of all student weights.
        gradient_checkpointing: recompute the student's decoder activations in backward.
        sampling / val_sampling: rollout sampling for training and for the validation OPD loss.
        divergence: the loss at kept positions: reverse_kl (TIP Eq. 9), forward_kl or jsd (``jsd_beta``).
        denominator: ``kept`` tokens of the whole step across ranks (TIP's mean), or ``valid`` tokens.
        stats_scope: normalise statistics over the whole step (``batch``, all ranks) or per ``micro`` batch.
        micro_batch_size: rollouts per forward/backward on each rank (default: all of them at once).
        chunk_size: positions per lm_head chunk in statistics and loss (bounds the logits' memory).
        optimizer: optimizer factory (default AdamW, lr 1e-6, weight decay 0.1, as the paper).
        lr_schedule / warmup_steps / min_lr_ratio: LR schedule over ``trainer.max_steps``.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        entropy_threshold / divergence_threshold: quadrant thresholds for logging (default: medians).
        generation_batch_size: rollouts generated at once (bounds generation memory).
        seed: seed of selection randomness and rollout sampling.
    """

    def __init__(
        self,
        student: str,
        teacher: str | None = None,
        selector: Selector | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        teacher_dtype: str | None = None,
        student_quantization: Quantization | None = None,
        teacher_quantization: Quantization | None = None,
        lora: LoRA | None = None,
        gradient_checkpointing: bool = False,
        sampling: Sampling = DEFAULT_SAMPLING,
        val_sampling: Sampling | None = None,
        divergence: str = "reverse_kl",
        jsd_beta: float = 0.5,
        denominator: str = "kept",
        stats_scope: str = "batch",
        micro_batch_size: int | None = None,
        chunk_size: int = 512,
        optimizer: OptimizerCallable = _adamw,
        lr_schedule: str = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        grad_clip: float | None = 1.0,
        entropy_threshold: float | None = None,
        divergence_threshold: float | None = None,
        generation_batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        _check_choice("denominator", denominator, DENOMINATORS)
        _check_choice("stats_scope", stats_scope, STATS_SCOPES)
        _check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
        self.divergence = losses.get_divergence(divergence, jsd_beta)
        for name, value in (("chunk_size", chunk_size), ("generation_batch_size", generation_batch_size)):
            if value < 1:
                raise ValueError(f"model.{name}={value} is not allowed; use an integer >= 1.")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"model.micro_batch_size={micro_batch_size} is not allowed; use >= 1 or null.")
        if student_quantization is not None and lora is None:
            raise ValueError("model.student_quantization is set but model.lora is not; a quantized student "
                             "trains only through a LoRA adapter (QLoRA): set model.lora.")
        self.save_hyperparameters(ignore=["selector", "optimizer"])
        self.selector = selector if selector is not None else AllTokens()
        self.optimizer_factory = optimizer
        self.sampling = sampling
        self.val_sampling = val_sampling or sampling
        self.engine: RolloutEngine = HFGenerate()
        self.automatic_optimization = False
        self.student: nn.Module | None = None
        self.tokenizer = None
        self.vocab_size = 0
        self.last_step: StepRecord | None = None
        self.next_batch = 0  # the data position: the next training batch (saved in checkpoints)

    # --- models --------------------------------------------------------------------------------------
    @property
    def tokenizer_source(self) -> str:
        return resolve(self.hparams.tokenizer or self.hparams.student)

    @property
    def tokenizer_field(self) -> str:
        """The config field that names the tokenizer (for error messages)."""
        return "model.tokenizer" if self.hparams.tokenizer else "model.student"

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher. Deliberately not a registered submodule: it is in no optimizer, no
        checkpoint, and no DDP bucket."""
        return self.__dict__.get("_teacher")

    @property
    def sharded(self) -> bool:
        """Whether the models are sharded over ranks (FSDP): then collectives run inside every forward."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy))

    def configure_model(self) -> None:
        if self.student is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(self.tokenizer_source, self.tokenizer_field)
        source = ModelSource(resolve(hp.student), hp.dtype, hp.student_quantization)
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        student = load_model(source, "model.student", device)
        if hp.lora is not None:
            with torch.random.fork_rng(devices=[]):  # the adapter's init depends on the seed alone
                torch.manual_seed(hp.seed)
                student = add_lora(student, hp.lora, quantized=hp.student_quantization is not None)
        if hp.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        models = [student]
        if hp.teacher is not None:
            if hp.tokenizer is None:
                check_tokenizers(self.tokenizer, load_tokenizer(resolve(hp.teacher), "model.teacher"))
            teacher_source = ModelSource(resolve(hp.teacher), hp.teacher_dtype or hp.dtype, hp.teacher_quantization)
            teacher = freeze(load_model(teacher_source, "model.teacher", device))
            self.__dict__["_teacher"] = teacher
            models.append(teacher)
        self.vocab_size = vocab_size(self.tokenizer, *models)
        self.student = student.train()  # from_pretrained returns eval mode; LoRA/dropout must train
        parallelize(self, student, self.teacher)

    def on_fit_start(self) -> None:
        if self.teacher is None:
            raise ValueError("model.teacher is not set; `fit` distils from a teacher: give its hub id or directory.")
        if self.hparams.lr_schedule == "cosine" and self.trainer.max_steps < 1:
            raise ValueError("trainer.max_steps is not set; the cosine LR schedule needs it (or use "
                             "model.lr_schedule: constant).")

    def configure_optimizers(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        hp, total = self.hparams, max(self.trainer.max_steps, 1)

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            if hp.lr_schedule == "constant":
                return 1.0
            progress = min((step - hp.warmup_steps) / max(total - hp.warmup_steps, 1), 1.0)
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- the algorithm ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # every step draws its randomness (dropout, selection) from (seed, batch index) alone, so a run
        # resumes exactly without restoring RNG states and the global RNG is left as it was
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.step_seed(batch["batch_index"]))
            self.distill(batch)
        self.next_batch = batch["batch_index"] + 1

    def step_seed(self, batch_index: int) -> int:
        return (self.hparams.seed * 1_000_003 + batch_index) % 2**63

    def distill(self, batch: dict[str, Any]) -> None:
        """One on-policy step: rollout, score, select, update, log."""
        rollout = self.timed("rollout", self.rollout, batch, self.sampling, self.hparams.seed)
        parts = self.timed("score", self.score, rollout, self.single_pass(rollout))
        stats, weights, rows = self.timed("select", self.select, parts, batch["batch_index"])
        self.last_step = StepRecord(rollout, _slice_stats(stats, rows, rollout.completion_mask.shape[1]),
                                    torch.cat([pad_right(w, rollout.completion_mask.shape[1]) for w in weights]))
        loss, kept_fraction = self.timed("update", self.update, parts, weights)
        self.log_step(stats, weights, loss, kept_fraction)

    def rollout(self, batch: dict[str, Any], sampling: Sampling, seed: int) -> Rollout:
        """Sample completions from the student, ``generation_batch_size`` rows at a time."""
        parts = []
        student = self.student
        was_training = student.training
        student.eval()
        eos = eos_token_ids(self.tokenizer, student)
        ids, mask, keys = batch["input_ids"], batch["attention_mask"], batch["keys"]
        for rows in torch.arange(len(ids)).split(self.hparams.generation_batch_size):
            parts.append(self.engine.generate(
                student, ids[rows], mask[rows], sampling=sampling, seed=seed, keys=keys[rows],
                eos_token_ids=eos, pad_token_id=self.tokenizer.pad_token_id, vocab_size=self.vocab_size,
                synced=self.sharded,
            ))
        student.train(was_training)
        return Rollout.cat(parts, self.tokenizer.pad_token_id)

    def single_pass(self, rollout: Rollout) -> bool:
        """Whether scoring and update can share one student forward (one micro-batch, grad enabled)."""
        size = self.hparams.micro_batch_size
        return torch.is_grad_enabled() and (size is None or size >= len(rollout.input_ids))

    def score(self, rollout: Rollout, keep_graph: bool = False) -> list[Scored]:
        """Teacher and student forward per micro-batch; chunked no-grad statistics at valid positions."""
        parts = []
        for mb in rollout.split(self.hparams.micro_batch_size or len(rollout.input_ids)):
            teacher_hidden = self.teacher_hidden(mb)
            rng = rng_state(self.device)
            with torch.set_grad_enabled(keep_graph):
                hidden = completion_hidden(self.student, mb.input_ids, mb.attention_mask, mb.prompt_length)
            raw, token_loss = token_stats_and_loss(
                hidden, self.student.get_output_embeddings(), teacher_hidden,
                self.teacher.get_output_embeddings(), mb.completion_mask, self.vocab_size,
                self.hparams.chunk_size, self.divergence, grad=torch.is_grad_enabled())
            parts.append(Scored(mb, teacher_hidden, raw, hidden if keep_graph else None, token_loss, rng))
        return parts

    def teacher_hidden(self, mb: Rollout) -> torch.Tensor:
        """Teacher hidden states at completion positions ``[r, C, d_t]`` (inference mode, then a plain copy)."""
        with torch.inference_mode():
            hidden = completion_hidden(self.teacher, mb.input_ids, mb.attention_mask, mb.prompt_length)
        return hidden.clone()

    def select(self, parts: list[Scored], batch_index: int) -> tuple[TokenStats, list[torch.Tensor], slice]:
        """Normalise over the stats scope and select.

        Returns the scope's stats (the whole step's, gathered over ranks, in ``batch`` scope), per-part
        float weights (0 = not kept) and the rows of the stats that are this rank's rollouts."""
        device = parts[0].raw.entropy.device
        generator = torch.Generator(device=device).manual_seed(self.step_seed(batch_index))
        if self.hparams.stats_scope == "micro":
            picked = [self._select(p.raw, p.rollout.completion_mask, generator) for p in parts]
            stats = _cat_stats([s for s, _ in picked])
            return stats, [w for _, w in picked], slice(0, len(stats.valid))
        raw = RawStats.cat([p.raw for p in parts])
        valid = RawStats.cat([RawStats(p.rollout.completion_mask, p.rollout.completion_mask,
                                       p.rollout.completion_mask) for p in parts]).entropy.bool()
        (entropy, rkl, fkl, valid), rows = all_gather_rows(self, [raw.entropy, raw.rkl, raw.fkl, valid])
        stats, weights = self._select(RawStats(entropy, rkl, fkl), valid, generator)
        local = weights[rows]
        return stats, [w[:, : p.rollout.completion_mask.shape[1]] for w, p in
                       zip(local.split([len(p.rollout.input_ids) for p in parts]), parts)], rows

    def _select(self, raw: RawStats, valid: torch.Tensor, generator: torch.Generator):
        stats = TokenStats.from_raw(raw.entropy, raw.rkl, raw.fkl, valid)
        keep = self.selector.select(stats, generator=generator)  # bool mask or float weights
        return stats, keep.float() * valid

    def update(self, parts: list[Scored], weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss at kept positions, backward per micro-batch, one optimizer step.

        Returns the step's loss and the fraction of valid tokens kept, both over all ranks."""
        kept = sum((w > 0).sum() for w in weights).float()
        valid = sum(p.rollout.completion_mask.sum() for p in parts).float()
        kept, valid = sum_over_ranks(self, torch.stack([kept, valid]))
        denominator = kept if self.hparams.denominator == "kept" else valid
        if kept == 0:
            warnings.warn("no token was kept on any rank this step; the step is skipped.", stacklevel=2)
            return torch.tensor(float("nan")), kept
        optimizer = self.optimizers()
        optimizer.zero_grad()
        total = torch.zeros((), device=self.device)
        for i, (part, w) in enumerate(zip(parts, weights)):
            with self.no_sync() if i < len(parts) - 1 else nullcontext():
                loss_sum = self.loss_sum(part, w)
                self.manual_backward(loss_sum)
            total += loss_sum.detach()
        self.scale_gradients(self.trainer.world_size / denominator)
        if self.hparams.grad_clip is not None:
            clip_grad_norm(self, optimizer, self.hparams.grad_clip)
        optimizer.step()
        self.lr_schedulers().step()
        return sum_over_ranks(self, total) / denominator, kept / valid

    def loss_sum(self, part: Scored, weights: torch.Tensor) -> torch.Tensor:
        """Weighted divergence summed over this micro-batch's kept positions (student lm_head with grad)."""
        mb = part.rollout
        hidden = part.student_hidden
        if hidden is None:
            with replay_rng(part.rng, self.device):
                hidden = completion_hidden(self.student, mb.input_ids, mb.attention_mask, mb.prompt_length)
        mask = weights > 0
        return selected_loss_sum(hidden[mask], part.teacher_hidden[mask], weights[mask],
                                 self.student.get_output_embeddings(), self.teacher.get_output_embeddings(),
                                 self.divergence, self.vocab_size, self.hparams.chunk_size,
                                 part.token_loss.at(mask) if part.token_loss is not None else None)

    def scale_gradients(self, factor: torch.Tensor | float) -> None:
        for p in self.student.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

    @contextmanager
    def no_sync(self):
        """Skip the gradient all-reduce of non-final micro-batches where the strategy can."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = self.trainer.strategy
        with strategy.block_backward_sync() if isinstance(strategy, DDPStrategy) else nullcontext():
            yield

    # --- logging --------------------------------------------------------------------------------------
    def timed(self, name: str, fn, *args):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.log(f"time/{name}", time.perf_counter() - start, on_step=True, reduce_fx="max", sync_dist=False)
        return out

    def log_step(self, stats: TokenStats, weights: list[torch.Tensor], loss: torch.Tensor,
                 kept_fraction: torch.Tensor) -> None:
        valid = stats.valid
        n_valid = valid.sum().clamp(min=1)
        metrics = {
            "train/loss": loss,
            "train/kept_fraction": kept_fraction,
            "train/entropy": (stats.entropy * valid).sum() / n_valid,
            "train/rkl": (stats.rkl * valid).sum() / n_valid,
            "train/completion_length": valid.sum(1).float().mean(),
            "lr": self.lr_schedulers().get_last_lr()[0],
        }
        ids = quadrants(stats, self.hparams.entropy_threshold, self.hparams.divergence_threshold)
        for name, share in quadrant_shares(ids, valid).items():
            metrics[f"quadrant/{name}_all"] = share
        if self.hparams.stats_scope == "batch":
            for name, share in quadrant_shares(ids, self.global_keep(weights, valid)).items():
                metrics[f"quadrant/{name}_kept"] = share
        self.log_dict(metrics, on_step=True, prog_bar=False)
        self.log("loss", loss, prog_bar=True, logger=False)

    def global_keep(self, weights: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """The whole step's keep mask ``[R_global, C]`` (gathered when distributed)."""
        local = torch.cat([pad_right(w, valid.shape[1]) for w in weights]) > 0
        (gathered,), _ = all_gather_rows(self, [local])
        return gathered[:, : valid.shape[1]]

    # --- validation: the OPD loss on held-out prompts -----------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.teacher is None:
            return
        rollout = self.rollout(batch, self.val_sampling, self.hparams.seed)
        total = torch.zeros((), device=self.device)
        for part in self.score(rollout):
            w = part.rollout.completion_mask.float()
            total += self.loss_sum(part, w)
        n = rollout.completion_mask.sum().clamp(min=1)
        self.log("val/opd_loss", total / n, on_epoch=True, sync_dist=True, batch_size=int(n))

    # --- checkpoints ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tiplight"] = {"next_batch": self.next_batch}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.next_batch = checkpoint.get("tiplight", {}).get("next_batch", 0)

    def export(self, out: str, merge: bool = True) -> str:
        """Save the student as a HF directory (merged LoRA weights, or the adapter with ``merge=False``)."""
        return str(export_student(self.student, self.tokenizer, out, merge))

    # --- generation for evaluation callbacks --------------------------------------------------------------
    def format_prompt(self, problem: str, instruction: str | None = None) -> str:
        """Text for the model, formatted as the datamodule formats training prompts."""
        from tiplight.data import format_prompt

        datamodule = self._datamodule()
        if datamodule is not None:
            return datamodule.format_prompt(problem, instruction)
        return format_prompt(self.tokenizer, problem, instruction)

    def _datamodule(self):
        """The attached ``PromptDataModule`` once set up (it owns prompt formatting), else None."""
        from tiplight.data import PromptDataModule

        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        ready = isinstance(datamodule, PromptDataModule) and datamodule.tokenizer is not None
        return datamodule if ready else None

    @torch.no_grad()
    def generate_completions(self, prompts: list[str], *, num_samples: int = 1, temperature: float = 0.0,
                             top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 256,
                             seed: int = 0) -> list[list[str]]:
        """``num_samples`` completion texts per prompt (special tokens stripped)."""
        from tiplight.data import Prompt, collate, encode_prompt

        sampling = Sampling(temperature, top_p, top_k, max_new_tokens)
        datamodule = self._datamodule()
        encode = datamodule.encode if datamodule is not None else lambda p: encode_prompt(self.tokenizer, p)
        encoded = [Prompt(str(i), p, encode(p), "") for i, p in enumerate(prompts)]
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v
                 for k, v in collate(encoded, self.tokenizer.pad_token_id, num_samples, 0).items()}
        rollout = self.rollout(batch, sampling, seed)
        texts = [self.tokenizer.decode(ids[mask], skip_special_tokens=True)
                 for ids, mask in zip(rollout.completion_ids, rollout.completion_mask)]
        return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def _cat_stats(parts: list[TokenStats]) -> TokenStats:
    """Concatenate per-micro-batch statistics (for logging in ``micro`` scope)."""
    width = max(p.valid.shape[1] for p in parts)
    fields = ("entropy", "rkl", "fkl", "valid", "entropy_hat", "rkl_hat")
    return TokenStats(**{f: torch.cat([pad_right(getattr(p, f), width) for p in parts]) for f in fields})


def _slice_stats(stats: TokenStats, rows: slice, width: int) -> TokenStats:
    """Rows ``rows`` of ``stats``, cut or padded to ``width`` completion positions."""
    fields = ("entropy", "rkl", "fkl", "valid", "entropy_hat", "rkl_hat")
    return TokenStats(**{f: pad_right(getattr(stats, f)[rows, :width], width) for f in fields})
