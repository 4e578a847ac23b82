"""The module samples with the engine it is given and tells it after every optimizer step."""

from __future__ import annotations

import pytest
from helpers import make_data, make_module, make_trainer
from jsonargparse import ArgumentParser
from transformers import Qwen3Config, Qwen3ForCausalLM

from tiplight.module import DistillModule
from tiplight.rollout import HFGenerate, RolloutEngine
from tiplight.vllm_engine import VLLMEngine, engine_config


class CountingEngine(HFGenerate):
    def __init__(self):
        self.generated = self.updates = 0
        self.updates_seen: list[int] = []  # updates announced before each generate call

    def generate(self, model, *args, **kwargs):
        self.generated += 1
        self.updates_seen.append(self.updates)
        return super().generate(model, *args, **kwargs)

    def weights_updated(self) -> None:
        self.updates += 1


def test_engine_generates_and_hears_of_every_update(tiny, prompts_file, tmp_path):
    engine = CountingEngine()
    module = make_module(tiny, engine=engine)
    make_trainer(tmp_path, max_steps=3).fit(module, make_data(prompts_file))
    assert engine.updates == 3
    assert engine.updates_seen == [0, 1, 2]  # each step's rollout comes after the previous step's update


@pytest.mark.parametrize("value,expected", [
    (None, HFGenerate), ({"class_path": "tiplight.vllm_engine.VLLMEngine", "init_args": {"kv_cache_gib": 1}}, VLLMEngine),
])
def test_engine_is_chosen_in_config(value, expected):
    """Parsing a config builds the engine object but starts nothing: vLLM need not even be installed."""
    parser = ArgumentParser()
    parser.add_class_arguments(DistillModule, "model")
    cfg = parser.parse_object({"model": {"student": "s", "engine": value}})
    module = parser.instantiate_classes(cfg).model
    assert type(module.engine) is expected and isinstance(module.engine, RolloutEngine)
    assert getattr(module.engine, "llm", None) is None


def test_bad_engine_options_are_one_clear_error():
    with pytest.raises(ValueError, match="engine.gpu_memory_utilization=1.5 is not allowed"):
        VLLMEngine(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="engine.sleep=True needs a CUDA GPU"):
        VLLMEngine(sleep=True)


def test_vllm_reads_the_architecture_of_a_model_built_from_a_config():
    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Qwen3ForCausalLM(config)
    assert not model.config.architectures
    assert engine_config(model).architectures == ["Qwen3ForCausalLM"]
    assert not model.config.architectures  # the student's own config is left as it was


def test_loading_a_checkpoint_tells_the_engine(tiny):
    engine = CountingEngine()
    make_module(tiny, engine=engine).on_load_checkpoint({"tiplight": {"next_batch": 3}})
    assert engine.updates == 1
