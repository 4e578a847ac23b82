"""The student's full weights for engines that keep their own copy: names, LoRA merged, student untouched."""

from __future__ import annotations

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


def test_lora_is_merged_without_touching_the_student():
    lora = add_lora(AutoModelForCausalLM.from_pretrained(toy.student_dir()), LoRA(r=4), quantized=False)
    with torch.no_grad():  # B starts at zero: give the adapters a delta
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    merged = dict(student_weights(lora))
    assert all(torch.equal(state[k], v) for k, v in lora.state_dict().items())
    reference = lora.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for name, weight in reference.items():
        torch.testing.assert_close(merged[name], weight, atol=1e-6, rtol=0)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
