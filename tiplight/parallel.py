"""Placement and sharding of teacher and student, and the few collectives a step needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.constants import default_pg_timeout


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` for FSDP2 over every process: data-parallel size = world size, tensor-
    parallel size 1, whatever the device and node counts. (Lightning's ``"auto"`` would make every GPU of a
    node one tensor-parallel group, for which tiplight has no plan.) Same arguments otherwise."""

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint,
                         process_group_backend, timeout)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def world_size(module: L.LightningModule) -> int:
    return module.trainer.world_size if module._trainer is not None else 1


def sum_over_ranks(module: L.LightningModule, value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over all ranks (itself on one process)."""
    if world_size(module) == 1:
        return value
    return module.trainer.strategy.reduce(value.clone(), reduce_op="sum")


def all_gather_rows(module: L.LightningModule, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], slice]:
    """Concatenate every rank's ``[R_local, C_local]`` tensors along rows, padding columns with zeros.

    Returns the gathered ``[R_global, C_max]`` tensors (rank-major, which is the global rollout order)
    and the slice of rows that belong to this rank.
    """
    rows = tensors[0].shape[0]
    if world_size(module) == 1:
        return tensors, slice(0, rows)
    width = int(module.trainer.strategy.reduce(torch.tensor(tensors[0].shape[1], device=module.device),
                                               reduce_op="max"))
    out = []
    for t in tensors:
        padded = nn.functional.pad(t.float(), (0, width - t.shape[1]))  # gloo cannot gather bool
        gathered = module.all_gather(padded).flatten(0, 1)  # [W * R_local, C_max]
        out.append(gathered.bool() if t.dtype == torch.bool else gathered.to(t.dtype))
    rank = module.trainer.global_rank
    return out, slice(rank * rows, (rank + 1) * rows)


def parallelize(module: L.LightningModule, student: nn.Module, teacher: nn.Module | None) -> None:
    """Shard the models for the trainer's strategy; otherwise place the teacher.

    - FSDP2 (``ModelParallelStrategy``): both models, per decoder layer, decoder and lm_head.
    - FSDP (``FSDPStrategy``): both models, wrapped here with FSDP1 in units that are each called through
      their own forward (:func:`fsdp1_shard`); Lightning then finds the module wrapped and does not wrap
      it again (its ``auto_wrap_policy`` is consumed here: one unit per decoder layer).
    - Anything else (single device, DDP): the teacher is not a registered submodule, so the strategy does
      not move it: it goes to the root device here.

    A quantized teacher (bitsandbytes) is never sharded: it was placed at load time and stays whole on
    every rank (bitsandbytes' packed weights do not shard under FSDP without a bf16 quant storage).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    trainer = module._trainer
    strategy = trainer.strategy if trainer is not None else None
    teacher = None if teacher is not None and is_quantized(teacher) else teacher
    if isinstance(strategy, (ModelParallelStrategy, FSDPStrategy)) and is_quantized(student):
        raise ValueError(
            f"model.student_quantization is set but trainer.strategy is {type(strategy).__name__}; a quantized "
            "(QLoRA) student trains on one device or under DDP (configs/strategy/ddp_lora.yaml), not sharded."
        )
    if isinstance(strategy, ModelParallelStrategy):
        check_mesh(module.device_mesh)
        for model in (student, teacher):
            if model is not None:
                fully_shard_causal_lm(model, module.device_mesh["data_parallel"])
    elif isinstance(strategy, FSDPStrategy):
        strategy.kwargs.pop("auto_wrap_policy", None)
        fsdp1_shard(student, strategy, frozen=False)
        if teacher is not None:
            fsdp1_shard(teacher, strategy, frozen=True)
    elif teacher is not None:
        teacher.to(strategy.root_device if strategy is not None else torch.device("cpu"))


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds bitsandbytes-quantized weights (placed at load time, never moved)."""
    return bool(getattr(model, "is_quantized", False))


def check_mesh(mesh) -> None:
    """tiplight shards over data parallelism only: a tensor-parallel dimension > 1 would replicate the
    models and leave gradients unsynchronised across it, so it is refused."""
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"trainer.strategy has tensor_parallel_size={mesh['tensor_parallel'].size()}; tiplight has no tensor-"
            "parallel plan: use tiplight.parallel.FSDP2Strategy (all ranks data-parallel) or set "
            "tensor_parallel_size: 1 and data_parallel_size: <number of processes>."
        )


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The decoder layer class(es) of a causal LM: the FSDP wrapping and checkpointing unit."""
    return {type(layer) for layer in model.get_decoder().layers}


def fully_shard_causal_lm(model: nn.Module, mesh) -> None:
    """FSDP2 units: each decoder layer, then the decoder and the lm_head, so that the decoder and the
    lm_head can each be called on their own. Untied, each is its own root unit. Tied, the shared weight
    must sit in one unit and FSDP2 accepts only a single module as a root, so both join one
    :class:`TiedRoot` (not a submodule of the model: names and checkpoints are unchanged) through which
    every decoder and lm_head call runs."""
    from torch.distributed.fsdp import fully_shard

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    if not tied(model):
        fully_shard(decoder, mesh=mesh)
        fully_shard(head, mesh=mesh)
        return
    root = TiedRoot(decoder, head)
    fully_shard(root, mesh=mesh)
    for part in (decoder, head):
        part.forward = partial(root, part)  # an instance attribute: nn.Module.__call__ finds it first


class TiedRoot(nn.Module):
    """One FSDP2 root over a tied model's decoder and lm_head: ``root(part, ...)`` gathers the shared
    weight (and the decoder's other non-layer parameters) and runs ``part``'s own class forward."""

    def __init__(self, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.decoder, self.head = decoder, head

    def forward(self, part: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return type(part).forward(part, *args, **kwargs)


def frozen_forward(model: nn.Module) -> AbstractContextManager:
    """How a frozen model runs: inference mode, or ``no_grad`` when it is FSDP2-sharded, because FSDP2
    on a single process fills its unsharded parameters under a version-counter guard that inference
    tensors lack ("Inference tensors do not track version counter", torch 2.13)."""
    from torch.distributed.fsdp import FSDPModule

    sharded = any(isinstance(m, FSDPModule) for m in model.modules())
    return torch.no_grad() if sharded else torch.inference_mode()


def fsdp1_units(model: nn.Module, layer_types: set[type[nn.Module]]) -> dict[str, nn.Module]:
    """The FSDP1 units of a frozen causal LM, by qualified name: every decoder layer (``layer_types``)
    and every parameter-holding child of the decoder that is no layer list (embeddings, final norm),
    plus the lm_head. No unit wraps the decoder or the whole model: FSDP1 wraps a module in a new
    ``FullyShardedDataParallel`` object, and ``get_decoder()`` would find the inner module and bypass
    the wrapper's unsharding. Each unit is therefore called through its own forward."""
    decoder = model.get_decoder()
    prefix = next(name for name, m in model.named_modules() if m is decoder)
    units: dict[str, nn.Module] = {}
    for name, child in decoder.named_children():
        if isinstance(child, nn.ModuleList):
            for i, layer in enumerate(child):
                if type(layer) not in layer_types:
                    raise ValueError(f"{prefix}.{name}.{i} is a {type(layer).__name__}, not one of the FSDP "
                                     f"layer classes {sorted(t.__name__ for t in layer_types)}.")
                units[f"{prefix}.{name}.{i}"] = layer
        elif any(True for _ in child.parameters()):
            units[f"{prefix}.{name}"] = child
    head_name = next(name for name, m in model.named_modules() if m is model.get_output_embeddings())
    units[head_name] = model.get_output_embeddings()
    return units


def tied(model: nn.Module) -> bool:
    """Whether the lm_head shares its weight with the input embeddings."""
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def untie_head(model: nn.Module) -> None:
    """Give a frozen model's lm_head its own copy of a tied embedding matrix (FSDP1 cannot shard one
    parameter in two units; the frozen model's outputs are unchanged)."""
    if tied(model):
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone(), requires_grad=False)


def fsdp1_shard(model: nn.Module, strategy, frozen: bool) -> None:
    """Shard ``model`` in place with FSDP1 (``FullyShardedDataParallel``), one unit per entry of
    :func:`fsdp1_units`, with the strategy's sharding, CPU offload and ``use_orig_params`` settings,
    ``device_id`` the rank's device; the trainable model also takes the strategy's mixed precision.
    A frozen model with tied embeddings is untied first; a trainable one is refused (one sentence)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if frozen:
        untie_head(model)
    elif tied(model):
        raise ValueError(
            "trainer.strategy is FSDPStrategy (FSDP1) but the student ties its lm_head to its input embeddings "
            "(tie_word_embeddings, e.g. Qwen3-4B, Qwen2.5-1.5B); FSDP1 cannot shard one trained parameter in two "
            "units that are called separately: use tiplight.parallel.FSDP2Strategy (configs/strategy/fsdp2.yaml)."
        )
    kwargs = {k: v for k, v in strategy.kwargs.items() if k != "auto_wrap_policy"}
    units = fsdp1_units(model, layer_classes(model))
    place_outside(model, list(units.values()), strategy.root_device)
    for name, unit in units.items():
        wrapped = FullyShardedDataParallel(
            unit, sharding_strategy=strategy.sharding_strategy, cpu_offload=strategy.cpu_offload,
            mixed_precision=None if frozen else strategy.mixed_precision_config,
            device_id=strategy.root_device, **kwargs)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapped)


def place_outside(model: nn.Module, units: list[nn.Module], device: torch.device) -> None:
    """Move the parameters and buffers that no FSDP unit holds (e.g. rotary tables) to ``device``,
    without ever placing the whole model there."""
    inside = {id(m) for unit in units for m in unit.modules()}
    for m in model.modules():
        if id(m) in inside:
            continue
        for name, buffer in m.named_buffers(recurse=False):
            m._buffers[name] = buffer.to(device)
        for name, param in m.named_parameters(recurse=False):
            m._parameters[name] = nn.Parameter(param.detach().to(device), requires_grad=param.requires_grad)


def clip_grad_norm(module: L.LightningModule, optimizer, max_norm: float) -> torch.Tensor | None:
    """Clip the student's gradient norm to ``max_norm``. Under ``FSDPStrategy`` Lightning's precision
    plugin refuses norm clipping and no single FSDP1 root exists (see :func:`fsdp1_shard`), so the norm
    is computed here over every rank's gradient shards; elsewhere Lightning clips. Returns the total norm
    before clipping under FSDP1 (None elsewhere)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(module.trainer.strategy, FSDPStrategy):
        module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
        return None
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    device = module.trainer.strategy.root_device
    square = sum((g.detach().float().pow(2).sum() for g in grads), torch.zeros((), device=device))
    total = sum_over_ranks(module, square).sqrt()
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.to(g.dtype))
    return total



@contextmanager
def no_sync(trainer: L.Trainer, skip: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce in this backward when ``skip`` (all micro-batches but the last)."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    with strategy.block_backward_sync() if skip and isinstance(strategy, DDPStrategy) else nullcontext():
        yield


def scale_gradients(model: nn.Module, factor: torch.Tensor | float) -> None:
    """Multiply every gradient of ``model`` by ``factor`` in place."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)
