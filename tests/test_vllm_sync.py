"""vLLM's copy of the student follows it: after an optimizer step the engine scores and samples as the
updated student does (full fine-tuning and LoRA)."""

from __future__ import annotations

import pytest
import torch
from engines import needs_vllm, vllm_engine
from transformers import AutoModelForCausalLM

from tiplight import toy
from tiplight.models import LoRA, add_lora
from tiplight.rollout import Sampling

pytestmark = needs_vllm

SEQUENCES = [[1, 63, 22, 15, 34, 67, 23, 33, 67, 7, 72, 7, 69, 10, 72, 10, 76, 68, 74, 7],
             [1, 9, 40, 41, 42, 12, 13, 80, 3, 4]]


def _student_logprobs(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, :-1].float()  # [L - 1, V]
    return logits.log_softmax(-1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]


def _assert_engine_matches(engine, model) -> None:
    for seq, got in zip(SEQUENCES, engine.logprobs(model, SEQUENCES)):
        torch.testing.assert_close(got, _student_logprobs(model, seq), atol=1e-4, rtol=0)


def _optimizer_step(model) -> None:
    """One large AdamW step on a next-token loss, so that every trainable weight moves."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    ids = torch.randint(3, 80, (4, 12), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    optimizer.step()


def _greedy(engine, model, ids):
    return engine.generate(model, ids, torch.ones_like(ids), sampling=Sampling(temperature=0, max_new_tokens=8),
                           seed=0, keys=torch.arange(len(ids)), eos_token_ids=[2], pad_token_id=0, vocab_size=85)


def _students():
    full = AutoModelForCausalLM.from_pretrained(toy.student_dir())
    lora = add_lora(AutoModelForCausalLM.from_pretrained(toy.student_dir()), LoRA(r=4), quantized=False)
    return {"full": full, "lora": lora}


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_engine_follows_the_student_after_an_update(kind):
    model = _students()[kind].eval()
    engine = vllm_engine()
    # longer than one vLLM KV block (128 tokens on CPU), so prefix caching may keep it across the update
    prompt = torch.randint(3, 80, (1, 140), generator=torch.Generator().manual_seed(1))
    _assert_engine_matches(engine, model)
    before = torch.cat(engine.logprobs(model, SEQUENCES))
    greedy_before = _greedy(engine, model, prompt).completion_ids

    _optimizer_step(model)
    engine.weights_updated()
    _assert_engine_matches(engine, model)
    assert (torch.cat(engine.logprobs(model, SEQUENCES)) - before).abs().max() > 1e-2  # the update mattered
    after = _greedy(engine, model, prompt)
    with torch.no_grad():
        argmax = model(after.input_ids).logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
    n = int(after.completion_mask.sum())
    assert torch.equal(after.completion_ids[0, :n], argmax[:n])
    assert not torch.equal(after.completion_ids, greedy_before)


def test_an_engine_handed_a_student_of_another_shape_rebuilds_for_it():
    """One engine, two students of different vocabulary and width: each is scored as itself (a stale
    engine would fail to load the second one's embedding, or score with the first one's shape)."""
    from transformers import Qwen3Config

    engine = vllm_engine()
    toy_student = AutoModelForCausalLM.from_pretrained(toy.student_dir()).eval()
    _assert_engine_matches(engine, toy_student)
    config = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256)
    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_config(config).eval()
    _assert_engine_matches(engine, other)
    _assert_engine_matches(engine, toy_student)  # and back
