"""The one rollout contract, checked against every engine on the shipped toy student."""

from __future__ import annotations

import shutil

import pytest
import torch
from engines import ENGINES, chi_square_pvalue, make_engine
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    RepetitionPenaltyLogitsProcessor,
)

from tiplight import toy
from tiplight.rollout import Rollout, Sampling, filter_logits

EOS, PAD, VOCAB = 2, 0, 80  # VOCAB < the model's 85 rows: the last rows stand for padded embeddings


@pytest.fixture(scope="module")
def student():
    return AutoModelForCausalLM.from_pretrained(toy.student_dir()).eval()


def _left_padded(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(toy.tokenizer_dir(), padding_side="left")
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _random_prompt(seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(seed)).repeat(rows, 1)
    return ids, torch.ones_like(ids)


def _generate(engine, model, ids, mask, sampling, keys=None, seed=0) -> Rollout:
    keys = torch.arange(len(ids)) if keys is None else keys
    return engine.generate(model, ids, mask, sampling=sampling, seed=seed, keys=keys, eos_token_ids=[EOS],
                           pad_token_id=PAD, vocab_size=VOCAB)


@pytest.mark.parametrize("engine", ENGINES)
def test_shapes_masks_eos_and_pads(engine, student):
    problems = toy.load_problems("test", 6)
    ids, mask = _left_padded([p["prompt"] for p in problems] + ["7"])  # the last prompt is much shorter
    max_new = 32  # toy answers take 17-48 tokens: some rows end at EOS, others at the budget
    out = _generate(make_engine(engine), student, ids, mask, Sampling(max_new_tokens=max_new))
    rows, width = len(ids), out.completion_ids.shape[1]
    assert out.prompt_length == ids.shape[1] and width <= max_new
    assert out.input_ids.shape == out.attention_mask.shape == (rows, ids.shape[1] + width)
    assert torch.equal(out.input_ids[:, : ids.shape[1]], ids)
    assert torch.equal(out.attention_mask, torch.cat([mask, out.completion_mask.long()], 1))
    ended = 0
    for comp, m in zip(out.completion_ids, out.completion_mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # one contiguous block from the first position
        assert (comp[n:] == PAD).all()
        assert EOS not in comp[: n - 1].tolist()
        ended += int(comp[n - 1] == EOS)
        assert comp[n - 1] == EOS or n == max_new  # a row ends at its first EOS or at the budget
    assert ended >= 1
    assert out.completion_ids[out.completion_mask].max() < VOCAB


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rollout_depends_only_on_seed_and_key(engine, student):
    eng = make_engine(engine)
    ids, mask = _random_prompt(1, 4)
    sampling = Sampling(max_new_tokens=12)
    together = _generate(eng, student, ids, mask, sampling, keys=torch.tensor([10, 11, 12, 13]))
    alone = _generate(eng, student, ids[:1], mask[:1], sampling, keys=torch.tensor([12]))
    n = int(alone.completion_mask.sum())
    assert torch.equal(together.completion_ids[2, :n], alone.completion_ids[0, :n])
    texts = {tuple(c[m].tolist()) for c, m in zip(together.completion_ids, together.completion_mask)}
    assert len(texts) > 1  # same prompt, different keys: different samples
    other_seed = _generate(eng, student, ids, mask, sampling, keys=torch.tensor([10, 11, 12, 13]), seed=1)
    assert not torch.equal(other_seed.completion_ids, together.completion_ids[:, : other_seed.completion_ids.shape[1]])


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_follows_the_students_argmax(engine, student):
    ids, mask = _left_padded([p["prompt"] for p in toy.load_problems("test", 4)])
    out = _generate(make_engine(engine), student, ids, mask, Sampling(temperature=0, max_new_tokens=16))
    with torch.no_grad():
        logits = student(out.input_ids, attention_mask=out.attention_mask).logits[:, :, :VOCAB]  # [R, T, V]
    predicted = logits[:, out.prompt_length - 1 : -1].argmax(-1)  # [R, C]
    assert torch.equal(predicted[out.completion_mask], out.completion_ids[out.completion_mask])


def _first_token_counts(engine, model, sampling: Sampling, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of the first sampled token over ``n`` rollouts of one prompt ``[V]``, and the prompt."""
    ids, mask = _random_prompt(5, n)  # a prompt where the student hesitates between tokens it contains
    out = _generate(make_engine(engine), model, ids, mask, Sampling(sampling.temperature, sampling.top_p,
                                                                     sampling.top_k, max_new_tokens=1))
    return torch.bincount(out.completion_ids[:, 0], minlength=VOCAB), ids[:1]


def _next_token_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[:, -1, :VOCAB]  # [1, V]


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.7, top_k=6, top_p=0.95)],
                         ids=["plain", "filtered"])
@pytest.mark.parametrize("engine", ENGINES)
def test_first_token_follows_the_students_distribution(engine, sampling, student):
    counts, prompt = _first_token_counts(engine, student, sampling, 3000)
    probs = filter_logits(_next_token_logits(student, prompt), sampling).softmax(-1)[0]
    assert chi_square_pvalue(counts, probs) > 1e-3


@pytest.mark.parametrize("engine", ENGINES)
def test_the_checkpoints_generation_config_never_applies(engine, student, tmp_path):
    """A student whose generation_config asks for a repetition penalty still samples its own softmax."""
    shutil.copytree(toy.student_dir(), tmp_path / "s")
    GenerationConfig(do_sample=True, repetition_penalty=1.3, top_k=3, eos_token_id=EOS, pad_token_id=PAD).save_pretrained(tmp_path / "s")
    penalised = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    assert penalised.generation_config.repetition_penalty == 1.3
    counts, prompt = _first_token_counts(engine, penalised, Sampling(), 3000)
    logits = _next_token_logits(penalised, prompt)
    assert chi_square_pvalue(counts, logits.softmax(-1)[0]) > 1e-3
    # the test has the power to see the penalty had it been applied
    with_penalty = RepetitionPenaltyLogitsProcessor(1.3)(prompt, logits.clone()).softmax(-1)[0]
    assert chi_square_pvalue(counts, with_penalty) < 1e-6
