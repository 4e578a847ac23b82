"""The student's full weights under their Hugging Face checkpoint names, one parameter at a time.

For engines that hold their own copy of the student (vLLM): LoRA adapters are merged into each weight
on the fly (the student itself is left untouched), FSDP2 shards are gathered parameter by parameter, so
at most one full weight beyond the shards exists at any time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

# wrappers that insert a level into parameter names without being part of the checkpoint
_WRAPPER_NAMES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``p``: an FSDP2 ``DTensor`` is gathered (a collective: every rank calls it)."""
    p = p.detach()
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def student_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(checkpoint name, full weight)`` for every parameter of ``model`` (a HF causal LM, possibly PEFT
    LoRA-wrapped and FSDP2-sharded), LoRA deltas merged in. A tied weight is yielded under each of its names:
    vLLM's in-place reload leaves a tied head on the old tensor unless it is given too."""
    if any("_fsdp_wrapped_module" in name for name, _ in model.named_parameters()):
        raise ValueError("the student is sharded with FSDP1 (strategy: fsdp), which VLLMEngine cannot read; "
                         "use FSDP2 (ModelParallelStrategy) or DDP with the vLLM engine.")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_quantized", False):
        raise ValueError("model.student_quantization is set, but VLLMEngine needs full-precision student weights "
                         "to merge the LoRA adapter into; use HFGenerate (the default engine) for QLoRA students.")
    for name, weight in _walk(base, ""):
        for wrapper in _WRAPPER_NAMES:
            name = name.replace(wrapper, "")
        yield name, weight


def _walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if hasattr(module, "base_layer") and hasattr(module, "lora_A"):  # a PEFT LoRA layer
        yield from _merged_lora(module, prefix)
        return
    for name, p in module.named_parameters(recurse=False):
        yield prefix + name, full_tensor(p)
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}{name}.")


def _merged_lora(layer: nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The base layer's weight plus ``scaling * B @ A`` of each active adapter (computed in float32)."""
    if getattr(layer, "merged", False):  # the deltas are already inside the base weight
        yield from _walk(layer.base_layer, prefix)
        return
    for name, p in layer.base_layer.named_parameters(recurse=False):
        if name != "weight":
            yield prefix + name, full_tensor(p)
    weight = full_tensor(layer.base_layer.weight)
    merged = weight.float()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter, False) or getattr(layer, "fan_in_fan_out", False):
            raise ValueError(f"LoRA adapter {adapter!r} at {prefix.rstrip('.')} uses DoRA or fan_in_fan_out, "
                             "which VLLMEngine cannot merge; use a plain LoRA adapter.")
        a = full_tensor(layer.lora_A[adapter].weight).float()  # [r, in]
        b = full_tensor(layer.lora_B[adapter].weight).float()  # [out, r]
        merged = merged + layer.scaling[adapter] * (b @ a)  # [out, in]
    yield prefix + "weight", merged.to(weight.dtype)
