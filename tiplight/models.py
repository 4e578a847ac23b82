"""Loading teacher and student: HF id or local directory, dtype, LoRA (peft), 4/8-bit (bitsandbytes)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoRA:
    """A LoRA adapter on the student (peft). ``target_modules``: names, or ``"all-linear"``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r={self.r} is not allowed; use an integer >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout} is not allowed; use 0 <= dropout < 1.")


@dataclass(frozen=True)
class Quantization:
    """bitsandbytes weight quantization: ``bits`` 4 (``nf4`` or ``fp4``) or 8."""

    bits: int = 4
    quant_type: str = "nf4"
    compute_dtype: str = "bfloat16"
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantization.bits={self.bits} is not allowed; use 4 or 8.")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quantization.quant_type={self.quant_type!r} is not allowed; use 'nf4' or 'fp4'.")
        check_dtype("quantization.compute_dtype", self.compute_dtype)

    def to_config(self):  # -> transformers.BitsAndBytesConfig
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_compute_dtype=DTYPES[self.compute_dtype],
            bnb_4bit_use_double_quant=self.double_quant,
        )


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and how it is loaded."""

    path: str
    dtype: str = "float32"
    quantization: Quantization | None = None
    attn_implementation: str | None = "sdpa"
    revision: str | None = None
    extra: dict = field(default_factory=dict)


def check_dtype(name: str, value: str) -> torch.dtype:
    """The torch dtype called ``value``; a clear error naming the field otherwise."""
    if value not in DTYPES:
        raise ValueError(f"{name}={value!r} is not a supported dtype; allowed: {', '.join(DTYPES)}.")
    return DTYPES[value]


def _not_found(field_name: str, source: str, error: Exception) -> ValueError:
    return ValueError(
        f"{field_name}={source!r} could not be loaded: it is not a local model directory and the Hugging Face "
        f"hub did not provide it ({type(error).__name__}); give a directory with config.json or a hub id "
        "reachable from this machine."
    )


def load_tokenizer(source: str, field_name: str = "model.tokenizer") -> PreTrainedTokenizerBase:
    """A tokenizer from a hub id or directory; guarantees a pad token (falls back to EOS)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise _not_found(field_name, source, error) from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(source: ModelSource, field_name: str, device: torch.device | str | None = None) -> nn.Module:
    """An ``AutoModelForCausalLM`` from ``source`` (weights in ``source.dtype``, optionally quantized).

    A quantized model is placed at load time (bitsandbytes quantizes while loading and its modules are
    not moved afterwards): on ``device`` when given, else where transformers puts it (the current CUDA
    device, which Lightning sets to each rank's GPU before ``configure_model``; the CPU without CUDA).
    Unquantized models load on the CPU and are placed or sharded by the strategy.
    """
    kwargs = dict(source.extra)
    kwargs["dtype"] = check_dtype(f"{field_name}.dtype", source.dtype)
    if source.attn_implementation:
        kwargs["attn_implementation"] = source.attn_implementation
    if source.quantization is not None:
        check_quantizable(source, field_name, device)
        kwargs["quantization_config"] = source.quantization.to_config()
        if device is not None:
            kwargs["device_map"] = {"": str(device)}
    try:
        return AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, **kwargs)
    except (OSError, ValueError) as error:
        if Path(source.path).is_dir() and (Path(source.path) / "config.json").exists():
            raise
        raise _not_found(field_name, source.path, error) from error


def check_quantizable(source: ModelSource, field_name: str, device: torch.device | str | None = None) -> None:
    """Refuse, in one sentence at start-up, a 4-bit model on the CPU whose linear layers bitsandbytes cannot pack.

    bitsandbytes' CPU 4-bit kernel (0.50 and newer, on CPUs with AVX512-BF16) stores each quantized weight in
    blocks of 32 output rows and quantizes the input dimension in blocks of ``blocksize`` (64); any other shape
    fails deep inside bitsandbytes (``N must be divisible by block_n``). The layers are read from the model's
    config on the meta device (no weights are loaded); the output layer stays unquantized, as in transformers.
    """
    on_cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    blocks = cpu_4bit_blocks() if source.quantization and source.quantization.bits == 4 and on_cpu else None
    if blocks is None:
        return
    rows, blocksize = blocks
    for name, in_features, out_features in quantized_linears(source):
        if in_features % blocksize or out_features % rows:
            raise ValueError(
                f"{field_name}_quantization.bits=4 cannot run on the CPU for {field_name}={source.path!r}: its "
                f"layer {name!r} is {in_features} -> {out_features} features, and bitsandbytes' CPU 4-bit kernel "
                f"needs in_features divisible by {blocksize} and out_features by {rows}; use bits 8, a GPU, or no "
                "quantization."
            )


def cpu_4bit_blocks() -> tuple[int, int] | None:
    """(output rows per block, input quantization blocksize) of bitsandbytes' packed CPU 4-bit layout, or
    None where this bitsandbytes on this CPU does not pack (and has no such shape constraint)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    probe = bnb.nn.Linear4bit(64, 64)
    if not getattr(probe, "support_avx512bf16_for_cpu", False):
        return None
    return 32, probe.weight.blocksize


def quantized_linears(source: ModelSource) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every ``nn.Linear`` that transformers quantizes (all but the
    output layer), from the config alone; empty when the config cannot be read (loading then says why)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path, revision=source.revision)
    except (OSError, ValueError):
        return []
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    output = skeleton.get_output_embeddings()
    return [(name, m.in_features, m.out_features) for name, m in skeleton.named_modules()
            if isinstance(m, nn.Linear) and m is not output]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter requires grad: how the teacher is kept."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def add_lora(model: nn.Module, lora: LoRA, quantized: bool) -> nn.Module:
    """Wrap ``model`` in a peft LoRA adapter (after k-bit preparation when quantized)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def keep_unpacked(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights for its CPU kernel.

    bitsandbytes 0.50 repacks a 4-bit weight at its first eval-mode forward without grad (a rollout) and keeps
    it packed; the packed kernel has no autograd, so later training steps would silently drop the gradient
    through the frozen base weights. The packed layout only speeds up inference: the teacher keeps it."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_student(source: ModelSource, lora: LoRA | None, *, seed: int, gradient_checkpointing: bool = False,
                 device: torch.device | str | None = None) -> nn.Module:
    """The student: loaded, with a LoRA adapter whose init depends on ``seed`` alone, and optionally
    activation checkpointing in its decoder."""
    student = load_model(source, "model.student", device)
    if source.quantization is not None:
        keep_unpacked(student)
    if lora is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = add_lora(student, lora, quantized=source.quantization is not None)
    if gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return student


def check_tokenizers(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase,
                     names: tuple[str, str] = ("model.student", "model.teacher")) -> None:
    """Two tokenizers must give the same token ids; otherwise one clear error at start-up naming both fields."""
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if s_vocab != t_vocab:
        only_s = sorted(set(s_vocab) - set(t_vocab))[:3]
        only_t = sorted(set(t_vocab) - set(s_vocab))[:3]
        moved = sum(1 for k in s_vocab.keys() & t_vocab.keys() if s_vocab[k] != t_vocab[k])
        raise ValueError(
            f"{names[1]} and {names[0]} use different tokenizers "
            f"({len(s_vocab)} vs {len(t_vocab)} tokens, {moved} shared tokens with other ids, e.g. only "
            f"{names[0]} has {only_s}, only {names[1]} has {only_t}); OPD needs one shared tokenizer."
        )


def check_teacher_tokenizer(tokenizer: PreTrainedTokenizerBase, teacher: str,
                            field_name: str) -> PreTrainedTokenizerBase | None:
    """The teacher's own tokenizer, which must match the run's (``field_name`` names where it came from);
    a teacher directory without a tokenizer cannot be checked, which is said in a warning (None)."""
    try:
        own = AutoTokenizer.from_pretrained(teacher)
    except (OSError, ValueError, TypeError):
        warnings.warn(f"model.teacher={teacher!r} has no tokenizer to check against {field_name}; make sure "
                      "the teacher reads the same token ids.", stacklevel=2)
        return None
    check_tokenizers(tokenizer, own, (field_name, "model.teacher"))
    return own


# rendered by both chat templates: a user turn, an answer, a second user turn, the generation prompt
SAMPLE_CONVERSATION = ({"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "2"},
                       {"role": "user", "content": "And 2+2?"})


def render_sample(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """``SAMPLE_CONVERSATION`` through the tokenizer's chat template (None without one)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return tokenizer.apply_chat_template(list(SAMPLE_CONVERSATION), tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that cannot render a plain conversation: still compared
        return f"<the template fails: {type(exc).__name__}>"


def chat_format_differences(student: tuple[PreTrainedTokenizerBase, list[int]],
                            teacher: tuple[PreTrainedTokenizerBase, list[int]]) -> list[str]:
    """How the (tokenizer, EOS ids) of student and teacher format a conversation differently: the
    rendered ``SAMPLE_CONVERSATION`` and the EOS tokens; empty when they agree."""
    (s_tok, s_eos), (t_tok, t_eos) = student, teacher
    differences = []
    s_text, t_text = render_sample(s_tok), render_sample(t_tok)
    if s_text != t_text:
        s_text, t_text = s_text or "<no chat template>", t_text or "<no chat template>"
        at = next((i for i, (a, b) in enumerate(zip(s_text, t_text)) if a != b), min(len(s_text), len(t_text)))
        differences.append(f"the chat templates render a conversation differently from character {at} "
                           f"({s_text[at:at + 24]!r} vs {t_text[at:at + 24]!r})")
    if s_eos != t_eos:
        differences.append(f"the EOS tokens differ ({s_tok.convert_ids_to_tokens(s_eos)} vs "
                           f"{t_tok.convert_ids_to_tokens(t_eos)})")
    return differences


def check_chat_format(student: tuple[PreTrainedTokenizerBase, list[int]],
                      teacher: tuple[PreTrainedTokenizerBase, list[int]], field_name: str, allow: bool) -> None:
    """Teacher and student must share the chat template and the EOS tokens: a teacher scoring turns in a
    format it was not trained on is OPD's most reported failure (length explosion, truncated answers).
    One sentence at start-up; ``allow`` (``model.allow_template_mismatch``) turns it into a warning."""
    differences = chat_format_differences(student, teacher)
    if not differences:
        return
    found = f"model.teacher and {field_name} format conversations differently: {'; '.join(differences)}"
    if allow:
        warnings.warn(f"{found} (allowed by model.allow_template_mismatch).", stacklevel=2)
        return
    raise ValueError(f"{found}; the teacher would score the student's turns in a format it does not use "
                     "(length explosion, truncated answers): pair models of one family, or set "
                     "model.allow_template_mismatch: true if the difference is on purpose.")


def vocab_size(tokenizer: PreTrainedTokenizerBase, *models: nn.Module) -> int:
    """The tokenizer's vocabulary; padded embedding rows beyond it (151936 vs 152064) are sliced off."""
    size = len(tokenizer)
    for model in models:
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < size:
            raise ValueError(
                f"a model's output layer has {rows} rows but the tokenizer has {size} tokens; "
                "the model and tokenizer do not belong together."
            )
    return size


def export_student(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: str | Path, merge: bool = True,
                   write: bool = True) -> Path:
    """Save the student as a standard HF directory: merged weights, or the PEFT adapter alone.

    Merging works on a copy, so the model in training keeps its adapter (a mid-run export is harmless). With
    several processes every rank calls it and only the one with ``write`` saves; an FSDP2-sharded student is
    gathered one weight at a time (a collective), LoRA merged on the fly."""
    out = Path(out)
    if any(hasattr(p, "full_tensor") for p in model.parameters()):
        return _export_sharded(model, tokenizer, out, merge, write)
    if not write:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and merge:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _export_sharded(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, merge: bool,
                    write: bool) -> Path:
    from safetensors.torch import save_file

    from tiplight.weights import student_weights

    if not merge:
        raise ValueError("RunSummary.merge_lora=False cannot export an FSDP2-sharded adapter; export merged "
                         "weights (merge_lora: true) or train the adapter with DDP (configs/strategy/ddp_lora.yaml).")
    state = {}
    for name, weight in student_weights(model):  # every rank: each full weight is a collective
        if write:
            state[name] = weight.cpu().contiguous()
    if write:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        base.config.save_pretrained(out)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out
