"""The LightningModule: rollout -> score -> select -> loss, one optimizer step per rollout batch."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from tiplight import generation, keep, startup, step_log
from tiplight.args import Logging, Memory, Optimization
from tiplight.chunked_stats import completion_hidden, replay_rng
from tiplight.envs import Environment
from tiplight.envs.training import sample_episodes
from tiplight.models import LoRA, Quantization, export_student
from tiplight.objective import selected_loss_sum
from tiplight.objectives import Objective, ReverseKL
from tiplight.optimizers import optimizer_and_schedule, optimizer_name
from tiplight.padding import pad_right
from tiplight.parallel import sum_over_ranks
from tiplight.passes import ScoredPart, sample, score
from tiplight.planted import load_planted_mask
from tiplight.resume import loop_state, non_finite
from tiplight.rollout import HFGenerate, Rollout, RolloutEngine, Sampling
from tiplight.seeding import mixed_seed, resolve_seed
from tiplight.selection import AllTokens, Selector, TokenStats
from tiplight.sources import resolve
from tiplight.teachers import ServedTeacher
from tiplight.update import update_step

# hyperparameters in checkpoints hold these config dataclasses: let weights-only loading accept them
torch.serialization.add_safe_globals([LoRA, Quantization, Sampling, Memory, Optimization, Logging])

DEFAULT_SAMPLING = Sampling()


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.1)


class DistillModule(L.LightningModule):
    """On-policy distillation of a frozen teacher into a student, with pluggable token selection.

    Args:
        student: student model, HF hub id or local directory.
        teacher: teacher model (frozen), HF hub id or directory, colocated or sharded with the student; or a
            teacher behind an inference server (``class_path: tiplight.teachers.VLLMTopK`` or ``VLLMHidden``,
            README "Teacher placement"); only ``validate`` may run without one.
        selector: which completion positions carry the loss (any ``tiplight.selection.Selector``).
        tokenizer: tokenizer id or directory; defaults to the student's. The teacher's must match it.
        dtype / teacher_dtype: weight dtypes (float32, bfloat16, float16); the teacher's defaults to ``dtype``.
        student_quantization / teacher_quantization: bitsandbytes 4/8-bit loading (a quantized student
            needs ``lora``: QLoRA).
        lora: train a LoRA adapter instead of all student weights.
        sampling / val_sampling: rollout sampling for training and for the validation OPD loss.
        objective: the loss at kept positions and its denominator (any ``tiplight.objectives.Objective``):
            ``ReverseKL`` by default (TIP Eq. 9), ``ForwardKL``, ``JSD``, ``TopKDivergence``, ``SampledTokenPG``.
        stats_scope: normalise statistics over the whole step (``batch``, all ranks) or per ``micro`` batch.
        optimizer: optimizer factory (default AdamW, lr 1e-6, weight decay 0.1, as the paper).
        optimization: LR schedule, gradient clipping and the limit on empty steps (``tiplight.args.Optimization``).
        memory: micro-batches, lm_head chunks, checkpointing, generation batch (``tiplight.args.Memory``).
        logging: quadrant thresholds and planted errors in the step's metrics (``tiplight.args.Logging``).
        seed: seed of the LoRA init, selection randomness and rollout sampling (default: ``seed_everything``).
        engine: what samples rollouts (training, validation and ``MathEvalCallback``): Hugging Face
            ``generate`` by default, or ``tiplight.vllm_engine.VLLMEngine``.
        allow_template_mismatch: train although teacher and student differ in chat template or EOS tokens
            (checked at start-up; a difference is an error unless this is set on purpose).
        environment: multi-turn episodes with tools (any ``tiplight.envs.Environment``, with
            ``tiplight.envs.EpisodeDataModule`` as data): only the student's own tokens are scored, selected
            and trained; tool turns are context for both models.
    """

    student: nn.Module | None  # loaded in configure_model
    last_step: keep.StepRecord | None  # the last training step on this rank, for diagnostics

    def __init__(
        self,
        student: str,
        teacher: str | ServedTeacher | None = None,
        selector: Selector | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32", teacher_dtype: str | None = None,
        student_quantization: Quantization | None = None, teacher_quantization: Quantization | None = None,
        lora: LoRA | None = None,
        sampling: Sampling = DEFAULT_SAMPLING, val_sampling: Sampling | None = None,
        objective: Objective | None = None, stats_scope: Literal["batch", "micro"] = "batch",
        optimizer: OptimizerCallable = _adamw,
        optimization: Optimization = Optimization(),
        memory: Memory = Memory(), logging: Logging = Logging(),
        seed: int | None = None, engine: RolloutEngine | None = None,
        allow_template_mismatch: bool = False,
        environment: Environment | None = None,
    ):
        super().__init__()
        startup.check_quantized_student(student_quantization, lora)
        served = isinstance(teacher, ServedTeacher)
        self.save_hyperparameters(ignore=["selector", "objective", "optimizer", "engine", "environment",
                                          *(["teacher"] if served else [])])
        self.served_teacher = teacher if served else None
        # under LightningCLI ``hparams`` holds these as plain dicts: the built objects are kept here
        self.lora, self.student_quantization, self.teacher_quantization = lora, student_quantization, teacher_quantization
        self.optimization, self.memory, self.logging = optimization, memory, logging
        self.seed = resolve_seed(seed)
        self.selector = selector if selector is not None else AllTokens()
        self.objective = objective if objective is not None else ReverseKL()
        self.optimizer_factory, self.environment = optimizer, environment
        self.sampling, self.val_sampling = sampling, val_sampling or sampling
        self.engine: RolloutEngine = engine if engine is not None else HFGenerate()
        self.planted_mask = load_planted_mask(logging.planted_errors) if logging.planted_errors is not None else None
        self.automatic_optimization = False
        self.student, self.tokenizer, self.vocab_size, self.last_step = None, None, 0, None
        self.next_batch = 0  # the data position: the next training batch (saved in checkpoints)
        self.empty_steps = 0  # consecutive steps that kept no token
        self.resumed_optimizer: str | None = None  # the optimizer class of the checkpoint resumed from

    # --- models --------------------------------------------------------------------------------------
    @property
    def tokenizer_source(self) -> str:
        return resolve(self.hparams.tokenizer or self.hparams.student)

    @property
    def tokenizer_field(self) -> str:
        """The config field that names the tokenizer (for error messages)."""
        return "model.tokenizer" if self.hparams.tokenizer else "model.student"

    @property
    def teacher(self) -> nn.Module | ServedTeacher | None:
        """The frozen teacher (a local model or a ``ServedTeacher``). Deliberately not a registered
        submodule: it is in no optimizer, no checkpoint, and no DDP bucket."""
        return self.__dict__.get("_teacher")

    @property
    def sharded(self) -> bool:
        """Whether the models are sharded over ranks (FSDP): then collectives run inside every forward."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy))

    def configure_model(self) -> None:
        """Load the tokenizer and models once (``tiplight.startup.load_models``), then shard them."""
        if self.student is None:
            startup.load_models(self)

    def on_fit_start(self) -> None:
        startup.check_fit(self)

    def teardown(self, stage: str) -> None:
        if self.served_teacher is not None:  # no request threads outlive the run (a later call starts new ones)
            self.served_teacher.close()

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return optimizer_and_schedule(self.optimizer_factory, params, self.optimization, self.trainer.max_steps)

    # --- the algorithm ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # every step draws its randomness (dropout, selection) from (seed, batch index) alone, so a run
        # resumes exactly without restoring RNG states and the global RNG is left as it was
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.step_seed(batch["batch_index"]))
            self.distill(batch)
        self.next_batch = batch["batch_index"] + 1

    def step_seed(self, batch_index: int) -> int:
        return mixed_seed(self.seed, batch_index)

    def distill(self, batch: dict[str, Any]) -> None:
        """One on-policy step: rollout, score, select, update, log."""
        with self.timer("rollout"):
            rollout = self.rollout(batch, self.sampling)
        with self.timer("score"):
            parts = self.score(rollout, keep_graph=self.single_pass(rollout))
        with self.timer("select"):
            stats, weights, rows = self.select(parts, batch["batch_index"], batch["keys"])
        width = rollout.completion_mask.shape[1]
        local_weights = torch.cat([pad_right(w, width) for w in weights])  # [R_local, C]
        self.last_step = keep.StepRecord(rollout, stats.rows(rows, width), local_weights)
        with self.timer("update"):
            loss, kept_fraction = self.update(parts, weights)
        self.log_step(stats, weights, loss, kept_fraction)
        step_log.log_sampler_gap(self, parts)
        if self.served_teacher is not None:  # this rank's requests and bytes received this step
            self.log_dict(self.served_teacher.traffic(), on_step=True, sync_dist=False)

    def rollout(self, batch: dict[str, Any], sampling: Sampling, seed: int | None = None) -> Rollout:
        """Sample completions from the student, ``generation_batch_size`` rows at a time (``seed``: the
        run's seed unless given, as evaluations give their own)."""
        seed = self.seed if seed is None else seed
        options = dict(sampling=sampling, seed=seed, vocab_size=self.vocab_size,
                       batch_size=self.memory.generation_batch_size, synced=self.sharded)
        if "problems" in batch:  # an episode batch (EpisodeDataModule): multi-turn, tool turns as context
            return sample_episodes(self.engine, self.student, self.tokenizer, self.environment, batch,
                                   **options).to_rollout()
        return sample(self.engine, self.student, self.tokenizer, batch, **options)

    def single_pass(self, rollout: Rollout) -> bool:
        """Whether scoring and update can share one student forward (one micro-batch, grad enabled)."""
        size = self.memory.micro_batch_size
        return torch.is_grad_enabled() and (size is None or size >= len(rollout.input_ids))

    def score(self, rollout: Rollout, keep_graph: bool = False) -> list[ScoredPart]:
        """Teacher and student forward per micro-batch; chunked no-grad statistics at valid positions."""
        return score(self.student, self.teacher, rollout, keep_graph=keep_graph, vocab_size=self.vocab_size,
                     micro_batch_size=self.memory.micro_batch_size or len(rollout.input_ids),
                     chunk_size=self.memory.chunk_size, objective=self.objective)

    def select(self, parts: list[ScoredPart], batch_index: int,
               keys: torch.Tensor) -> tuple[TokenStats, list[torch.Tensor], slice]:
        """Normalise over the stats scope and select (``tiplight.keep.select``)."""
        return keep.select(self, self.selector, self.hparams.stats_scope, parts, self.step_seed(batch_index), keys)

    def update(self, parts: list[ScoredPart], weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss at kept positions, backward per micro-batch, one optimizer step (``tiplight.update.update_step``).

        Returns the step's loss and the fraction of valid tokens kept, both over all ranks."""
        return update_step(self, parts, weights)

    def loss_sum(self, part: ScoredPart, weights: torch.Tensor) -> torch.Tensor:
        """Weighted loss summed over this micro-batch's kept positions (student lm_head with grad)."""
        mb, hidden, mask = part.rollout, part.student_hidden, weights > 0
        if hidden is None and part.token_loss is not None and not torch.is_grad_enabled():
            return (weights[mask] * part.token_loss.at(mask).loss).sum()  # validation: scored already
        if hidden is None:
            with replay_rng(part.rng, self.device):
                hidden = completion_hidden(self.student, mb.input_ids, mb.attention_mask, mb.prompt_length)
        return selected_loss_sum(hidden[mask], part.teacher_hidden[mask], weights[mask],
                                 self.student.get_output_embeddings(), self.teacher.get_output_embeddings(),
                                 self.objective, self.vocab_size, self.memory.chunk_size,
                                 part.token_loss.at(mask) if part.token_loss is not None else None,
                                 part.context.at(mask) if part.context is not None else None)

    # --- logging (tiplight.step_log) ----------------------------------------------------------------------
    def timer(self, name: str) -> AbstractContextManager[None]:
        """Log the wall time of the block as ``time/<name>`` (synchronised on CUDA)."""
        return step_log.timer(self, name)

    def log_step(self, stats: TokenStats, weights: list[torch.Tensor], loss: torch.Tensor,
                 kept_fraction: torch.Tensor) -> None:
        step_log.log_step(self, stats, weights, loss, kept_fraction)

    def global_keep(self, weights: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """The whole step's keep mask ``[R_global, C]`` (gathered when distributed)."""
        return keep.global_keep(self, weights, valid.shape[1])

    # --- validation: the OPD loss on held-out prompts -----------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.val_sums = torch.zeros(2, device=self.device)  # OPD loss summed over tokens, tokens

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.teacher is None:
            return
        rollout = self.rollout(batch, self.val_sampling)
        for part in self.score(rollout):
            w = part.rollout.completion_mask.float()
            self.val_sums += torch.stack([self.loss_sum(part, w).detach(), w.sum()])

    def on_validation_epoch_end(self) -> None:
        """The mean over every validation token of every rank: the same on any number of processes."""
        if self.teacher is not None:
            total, tokens = sum_over_ranks(self, self.val_sums)
            self.log("val/opd_loss", total / tokens.clamp(min=1), sync_dist=True)  # equal on every rank

    # --- checkpoints ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tiplight"] = {"next_batch": self.next_batch,
                                  "optimizer": optimizer_name(self.trainer.optimizers)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.next_batch, self.resumed_optimizer = loop_state(checkpoint)
        self.engine.weights_updated()  # the student is about to get the checkpoint's weights

    def export(self, out: str, merge: bool = True, write: bool = True) -> str:
        """Save the student as a HF directory (merged LoRA weights, or the adapter with ``merge=False``); with
        several processes every rank calls it and the one with ``write`` saves. Refused (on every rank)
        while any weight holds NaN or inf."""
        bad = non_finite(self.student.named_parameters())
        if sum_over_ranks(self, torch.tensor(float(bad is not None), device=self.device)) > 0:
            raise ValueError(f"the student's weight {bad or '(on another rank)'} holds NaN or inf; it is not "
                             f"exported to {out}.")
        return str(export_student(self.student, self.tokenizer, out, merge, write))

    # --- generation for evaluation callbacks (MathEvalCallback's interface) ------------------------------
    def format_prompt(self, problem: str, instruction: str | None = None) -> str:
        return generation.prompt_text(self, problem, instruction)

    def generate_completions(self, prompts: list[str], **sampling: Any) -> list[list[str]]:
        return generation.generate_completions(self, prompts, **sampling)

    def generate_episodes(self, problems: list[dict[str, Any]], **sampling: Any):
        return generation.generate_episodes(self, problems, **sampling)
