"""The student's full weights for engines that keep their own copy: names, LoRA merged, student untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiplight import toy
from tiplight.models import LoRA, add_lora
from tiplight.weights import student_weights


def test_full_weights_carry_checkpoint_names_and_tied_heads():
    model = AutoModelForCausalLM.from_pretrained(toy.student_dir())
    weights = dict(student_weights(model))
    assert weights.keys() == model.state_dict().keys()  # the toy student ties its head: both names
    for name, weight in model.state_dict().items():
        assert torch.equal(weights[name], weight)


def test_quantized_students_are_refused_in_one_sentence():
    model = AutoModelForCausalLM.from_pretrained(toy.student_dir())
    model.is_quantized = True  # as bitsandbytes loading marks it
    with pytest.raises(ValueError, match="model.student_quantization is set"):
        next(student_weights(model))


def _lora_student():
    lora = add_lora(AutoModelForCausalLM.from_pretrained(toy.student_dir()), LoRA(r=4), quantized=False)
    with torch.no_grad():  # B starts at zero: give the adapters a delta
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    return lora


def test_lora_is_merged_without_touching_the_student():
    lora = _lora_student()
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    merged = dict(student_weights(lora))
    assert all(torch.equal(state[k], v) for k, v in lora.state_dict().items())
    reference = lora.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for name, weight in reference.items():
        torch.testing.assert_close(merged[name], weight, atol=1e-6, rtol=0)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])


def _fsdp2_worker(rank: int, port: int, lora: bool, out: str) -> None:
    """Shard the toy student (optionally LoRA-wrapped) over 2 gloo ranks; check the gathered weights."""
    import os

    from torch.distributed.device_mesh import init_device_mesh

    from tiplight.parallel import fully_shard_causal_lm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = _lora_student() if lora else AutoModelForCausalLM.from_pretrained(toy.student_dir())
    expected = dict(student_weights(model))
    fully_shard_causal_lm(model.get_base_model() if lora else model, init_device_mesh("cpu", (2,)))
    assert any(hasattr(p, "full_tensor") for p in model.parameters())  # really sharded
    gathered = dict(student_weights(model))
    assert gathered.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(gathered[name], weight, atol=1e-6, rtol=0)
    if rank == 0:
        Path(out).write_text("ok")
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_shards_are_gathered_parameter_by_parameter(lora, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_fsdp2_worker, args=(port, lora, str(tmp_path / "ok")), nprocs=2)
    assert (tmp_path / "ok").read_text() == "ok"
