"""The multi-turn loop on a tiny Qwen3 through every rollout engine (HFGenerate; VLLMEngine where vLLM is
installed): masks, reproducibility per rollout key whatever the batch, each turn a plain generate with its
turn key, and the training Rollout it gives (statistics only at sampled tokens, tool tokens as context).

Episodes stay under 256 tokens, the test vLLM engine's max_model_len."""

from __future__ import annotations

import pytest
import torch
from agent_fixtures import EOS, PAD, VOCAB, EveryTurnTool, tool_model, tool_tokenizer
from engines import ENGINES, make_engine
from transformers import AutoModelForCausalLM

from tiplight.chunked_stats import completion_hidden
from tiplight.envs import engine_turns, run_episodes, turn_keys
from tiplight.passes import score
from tiplight.rollout import Sampling


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent_hf")
    tokenizer = tool_tokenizer(root / "tok")
    model = AutoModelForCausalLM.from_pretrained(tool_model(root / "model")).eval()
    return tokenizer, model


def episodes(setup, problems, keys, seed=0, engine="hf", max_turns=3, max_new_tokens=6):
    tokenizer, model = setup
    generate = engine_turns(make_engine(engine), model, sampling=Sampling(max_new_tokens=max_new_tokens), seed=seed,
                            eos_token_ids=[EOS], pad_token_id=PAD, vocab_size=VOCAB)
    env = EveryTurnTool(max_turns=max_turns, max_tokens=256)
    return run_episodes(generate, tokenizer, env, problems, torch.tensor(keys), max_new_tokens=max_new_tokens,
                        eos_token_ids=[EOS])


def row(out, i):
    real = out.attention_mask[i].bool()
    return out.input_ids[i][real].tolist(), out.sampled_mask[i][real].tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_tool_tokens_are_attended_but_never_sampled(setup, engine):
    problems = EveryTurnTool().problems("train")
    out = episodes(setup, problems, [0, 1, 2, 3], engine=engine)
    assert not (out.sampled_mask & ~out.attention_mask.bool()).any()
    for i, segments in enumerate(out.segments):
        kinds = [s.kind for s in segments]
        assert kinds.count("tool") >= 1 and kinds[0] == "prompt"
        for s in segments:
            assert out.attention_mask[i, s.start : s.end].all()
            assert bool(out.sampled_mask[i, s.start : s.end].all()) == (s.kind == "student")
            assert out.sampled_mask[i, s.start : s.end].any() == (s.kind == "student")
        assert int(out.sampled_mask[i].sum()) == sum(s.end - s.start for s in segments if s.kind == "student")
    assert out.input_ids[out.sampled_mask].max() < VOCAB  # padded embedding rows are never sampled


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rollout_depends_only_on_seed_and_its_key(setup, engine):
    problems = EveryTurnTool().problems("train")
    together = episodes(setup, problems, [10, 11, 12, 13], engine=engine)
    alone = episodes(setup, problems[2:3], [12], engine=engine)
    reordered = episodes(setup, [problems[2], problems[0]], [12, 10], engine=engine)
    assert row(together, 2) == row(alone, 0) == row(reordered, 0)
    assert row(together, 0) == row(reordered, 1)
    other_seed = episodes(setup, problems[2:3], [12], seed=1, engine=engine)
    assert row(other_seed, 0) != row(alone, 0)
    same_problem = episodes(setup, [problems[0]] * 2, [20, 21], engine=engine)
    assert row(same_problem, 0) != row(same_problem, 1)  # keys, not problems, name the samples


@pytest.mark.parametrize("engine", ENGINES)
def test_each_turn_samples_with_its_own_key_and_turn_zero_is_single_turn_sampling(setup, engine):
    _, model = setup
    problems = EveryTurnTool().problems("train")[:1]
    out = episodes(setup, problems, [5], engine=engine)
    student = [s for s in out.segments[0] if s.kind == "student"]
    for turn, s in enumerate(student):
        prefix = out.input_ids[:1, out.segments[0][0].start : s.start]
        direct = make_engine(engine).generate(model, prefix, torch.ones_like(prefix), sampling=Sampling(max_new_tokens=6),
                                       seed=0, keys=turn_keys(torch.tensor([5]), turn), eos_token_ids=[EOS],
                                       pad_token_id=PAD, vocab_size=VOCAB)
        n = s.end - s.start
        assert direct.completion_ids[0, :n].tolist() == out.input_ids[0, s.start : s.end].tolist()
    assert torch.equal(turn_keys(torch.tensor([5]), 0), torch.tensor([5]))
    assert len({int(turn_keys(torch.tensor([5]), t)) for t in range(4)}) == 4


def test_training_rollout_scores_only_sampled_tokens_with_tool_tokens_as_context(setup):
    _, model = setup
    out = episodes(setup, EveryTurnTool().problems("train"), [0, 1, 2, 3])
    rollout = out.to_rollout()
    (part,) = score(model, model, rollout, micro_batch_size=4, vocab_size=VOCAB, chunk_size=64)
    sampled = rollout.completion_mask
    assert (part.raw.entropy[sampled] > 0).all() and (part.raw.entropy[~sampled] == 0).all()
    # the tool tokens are context: changing one changes what the model sees at the student's later tokens
    first_tool = next(s for s in out.segments[0] if s.kind == "tool")
    edited = rollout.input_ids.clone()
    edited[0, first_tool.start + 1] = 5
    with torch.no_grad():
        h = completion_hidden(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
        h_edit = completion_hidden(model, edited, rollout.attention_mask, rollout.prompt_length)
    later = sampled[0].clone()
    later[: first_tool.end - rollout.prompt_length] = False
    assert later.any() and not torch.allclose(h[0][later], h_edit[0][later])
