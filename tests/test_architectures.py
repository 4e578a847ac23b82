"""The real architectures of the shipped configs, built on the meta device from tests/fixtures: parameter
counts, FSDP units (FSDP1 and the YAML auto-wrap policy), and the sharding refusals that speak to the user."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from tiplight.parallel import check_mesh, fsdp1_shard, fsdp1_units, layer_classes, tied

FIXTURES = Path(__file__).with_name("fixtures")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PUBLISHED = {  # total parameters as published on each model card (billions)
    "Qwen--Qwen3-32B": 32.8, "Qwen--Qwen3-14B": 14.8, "Qwen--Qwen3-8B": 8.2, "Qwen--Qwen3-4B": 4.0, "Qwen--Qwen3-1.7B": 1.7, "Qwen--Qwen3-0.6B": 0.6,
    "meta-llama--Llama-3.3-70B-Instruct": 70.6, "meta-llama--Llama-3.1-8B-Instruct": 8.0,
    "Qwen--Qwen2.5-14B-Instruct": 14.7, "Qwen--Qwen2.5-1.5B-Instruct": 1.54,
}
TIED = {"Qwen--Qwen3-4B", "Qwen--Qwen3-1.7B", "Qwen--Qwen3-0.6B", "Qwen--Qwen2.5-1.5B-Instruct"}


@cache
def meta_model(name: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(FIXTURES / name))


def test_every_fixture_is_listed():
    assert sorted(p.parent.name for p in FIXTURES.glob("*/config.json")) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_model_card(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(PUBLISHED[name], rel=0.03)
    assert tied(model) == (name in TIED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_fsdp1_units_cover_every_parameter_once(name):
    model = meta_model(name)
    units = fsdp1_units(model, layer_classes(model))
    decoder = model.get_decoder()
    assert [units[f"model.layers.{i}"] for i in range(len(decoder.layers))] == list(decoder.layers)
    assert units["lm_head"] is model.get_output_embeddings() and units["model.embed_tokens"] is decoder.embed_tokens
    owned = [id(p) for unit in units.values() for p in unit.parameters()]
    distinct = {id(p) for p in model.parameters()}
    assert set(owned) == distinct
    assert len(owned) == len(distinct) + (1 if name in TIED else 0)  # a tied matrix sits in two units


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_yaml_auto_wrap_policy_picks_exactly_the_decoder_layers(name):
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FSDPStrategy, "strategy", skip={"accelerator", "parallel_devices"})
    init_args = yaml.safe_load((CONFIGS / "strategy" / "fsdp.yaml").read_text())["trainer"]["strategy"]["init_args"]
    policy = parser.parse_object({"strategy": init_args}).strategy.auto_wrap_policy
    model = meta_model(name)
    wrapped = [m for m in model.modules() if type(m) in ModuleWrapPolicy(policy)._module_classes]
    assert wrapped == list(model.get_decoder().layers)


def test_fsdp1_refuses_a_tied_student_in_one_sentence():
    model = meta_model("Qwen--Qwen3-4B")
    with pytest.raises(ValueError, match="ties its lm_head.*FSDP2Strategy"):
        fsdp1_shard(model, SimpleNamespace(kwargs={}), frozen=False)


class Mesh:
    """A 2-D device mesh's names and sizes, as check_mesh reads them."""

    def __init__(self, data_parallel: int, tensor_parallel: int):
        self.sizes = {"data_parallel": data_parallel, "tensor_parallel": tensor_parallel}
        self.mesh_dim_names = tuple(self.sizes)

    def __getitem__(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(size=lambda: self.sizes[name])


def test_tensor_parallel_mesh_is_refused():
    with pytest.raises(ValueError, match="tensor_parallel_size=8"):
        check_mesh(Mesh(1, 8))
    check_mesh(Mesh(8, 1))


def test_fsdp2_strategy_uses_every_process_for_data_parallelism():
    from tiplight.parallel import FSDP2Strategy

    strategy = FSDP2Strategy()
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", 1)
