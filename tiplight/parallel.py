"""Placement and sharding of teacher and student, and the few collectives a step needs."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn


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
    """Shard both models with FSDP2 under ``ModelParallelStrategy``; otherwise place the teacher.

    The teacher is not a registered submodule, so the strategy does not move it: it goes to the root
    device here (quantized models were placed at load time).
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = module._trainer
    if trainer is not None and isinstance(trainer.strategy, ModelParallelStrategy):
        mesh = module.device_mesh["data_parallel"]
        for model in (student, teacher):
            if model is not None:
                fully_shard_causal_lm(model, mesh)
        return
    if teacher is not None and not getattr(teacher, "is_quantized", False):
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        teacher.to(device)


def fully_shard_causal_lm(model: nn.Module, mesh) -> None:
    """FSDP2 units: each decoder layer, the decoder, and the lm_head (grouped with the decoder when
    tied), so that the decoder and the lm_head can each be called on their own."""
    from torch.distributed.fsdp import fully_shard

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    if head.weight is decoder.get_input_embeddings().weight:
        fully_shard([decoder, head], mesh=mesh)
    else:
        fully_shard(decoder, mesh=mesh)
        fully_shard(head, mesh=mesh)
