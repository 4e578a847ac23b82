"""The multi-turn loop with scripted generators: conversation tokens through the chat template, the two
masks and segments, endings, batching, and the agentic toy task solved only with its tool."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from agent_fixtures import EOS, EveryTurnTool, Scripted, call, tool_tokenizer

from tiplight.envs import ToyLookup, avg_at_k, best_at_k, run_episodes, scores_at_k
from tiplight.envs.render import ChatRenderer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tool_tokenizer(tmp_path_factory.mktemp("tooltok"))


def lookup_agent(conversation: str) -> str:
    """Looks up every price, then names the dearest affordable item: what a good agent does."""
    items = re.search(r"items: ([a-z, ]+)\.", conversation).group(1).split(", ")
    prices = [int(p) for p in re.findall(r"<tool_response>\n(\d+)\n", conversation)]
    if len(prices) < len(items):
        return call("price", item=items[len(prices)])
    budget = int(re.search(r"budget (\d+)\.", conversation).group(1))
    return max((p, i) for p, i in zip(prices, items) if p <= budget)[1]


def guessing_agent(conversation: str) -> str:
    return re.search(r"items: ([a-z]+)", conversation).group(1)  # the first item, never looks


def run(tokenizer, env, problems, respond, max_new_tokens=128, keys=None, eos=True):
    keys = torch.arange(len(problems)) if keys is None else keys
    generate = Scripted(tokenizer, respond, eos=eos)
    return run_episodes(generate, tokenizer, env, problems, keys, max_new_tokens=max_new_tokens,
                        eos_token_ids=[EOS]), generate


def test_the_toy_task_needs_its_tool(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=40)
    problems = env.problems("test")
    good, _ = run(tokenizer, env, problems, lookup_agent)
    guess, _ = run(tokenizer, env, problems, guessing_agent)
    assert good.scores(env).tolist() == [1.0] * len(problems)
    assert all(e.tool_calls == 3 and e.end == "answer" for e in good.episodes)
    assert guess.scores(env).mean() < 0.6 and all(e.tool_calls == 0 for e in guess.episodes)


def test_tokens_are_the_templates_rendering_of_the_whole_conversation(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=3)
    out, _ = run(tokenizer, env, env.problems("test"), lookup_agent)
    for row, episode in enumerate(out.episodes):
        tools = env.tool_schemas(episode.problem)
        text = tokenizer.apply_chat_template(episode.messages, tools=tools, tokenize=False)
        ids = out.input_ids[row][out.attention_mask[row].bool()].tolist()
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == expected[: len(ids)] and len(expected) - len(ids) == 1  # the template's "\n" after </s>


def test_sampled_mask_holds_exactly_the_students_turns(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=4)
    out, _ = run(tokenizer, env, env.problems("test"), lookup_agent)
    assert not (out.sampled_mask & ~out.attention_mask.bool()).any()
    assert not out.sampled_mask[:, : out.prompt_length].any()
    for row, (episode, segments) in enumerate(zip(out.episodes, out.segments)):
        student = [s for s in segments if s.kind == "student"]
        tool = [s for s in segments if s.kind == "tool"]
        assert [s.kind for s in segments] == ["prompt"] + ["student", "tool"] * 3 + ["student"]
        assert segments[0].end == out.prompt_length
        assert segments[-1].end - segments[0].start == int(out.attention_mask[row].sum())
        sampled = out.input_ids[row][out.sampled_mask[row]].tolist()
        assert sampled == [t for s in student for t in out.input_ids[row, s.start : s.end].tolist()]
        turns = [m["content"] for m in episode.messages if m["role"] == "assistant"]
        assert [tokenizer.decode(out.input_ids[row, s.start : s.end], skip_special_tokens=True)
                for s in student] == turns
        for s in tool:
            assert out.attention_mask[row, s.start : s.end].all() and not out.sampled_mask[row, s.start : s.end].any()
            assert "<tool_response>" in tokenizer.decode(out.input_ids[row, s.start : s.end])
        assert all(a.end == b.start for a, b in itertools.pairwise(segments))  # no gaps inside a row
    rollout = out.to_rollout()
    assert torch.equal(rollout.completion_mask, out.sampled_mask[:, out.prompt_length:])
    assert torch.equal(rollout.attention_mask, out.attention_mask)


def test_live_episodes_share_one_generate_call_per_turn(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=4)
    problems = env.problems("test")
    mixed = lambda text: guessing_agent(text) if "cup" in text.split("items:")[-1] else lookup_agent(text)  # noqa: E731
    out, generate = run(tokenizer, env, problems, mixed)
    assert generate.batches[0] == 4 and generate.batches == sorted(generate.batches, reverse=True)
    assert len(generate.batches) == 1 + max(e.tool_calls for e in out.episodes)


def test_episodes_end_at_max_turns_and_max_tokens(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=2, max_turns=2)
    always_calls = lambda text: call("price", item="pen")  # noqa: E731
    out, _ = run(tokenizer, env, env.problems("test"), always_calls)
    assert [e.end for e in out.episodes] == ["max_turns"] * 2 and [e.turns for e in out.episodes] == [2, 2]
    assert out.scores(env).tolist() == [0.0, 0.0]
    short = ToyLookup(test_size=2, max_tokens=600)
    out, _ = run(tokenizer, short, short.problems("test"), lookup_agent)
    assert [e.end for e in out.episodes] == ["max_tokens"] * 2
    assert (out.attention_mask.sum(1) <= 600).all()


def test_a_prompt_longer_than_max_tokens_is_one_sentence(tokenizer):
    env = ToyLookup(test_size=1, max_tokens=20)
    with pytest.raises(ValueError, match=r"prompt of problem 'lookup-test-0' is \d+ tokens long; max_tokens=20"):
        run(tokenizer, env, env.problems("test"), lookup_agent)


REWRITING_TEMPLATE = (  # like Qwen3's: the last assistant turn shows a thinking block, earlier ones lose theirs
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' and loop.last -%}{{- '<s>assistant\\n<think></think>' + m['content'] + '</s>\\n' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- '<s>assistant\\n' + m['content'].split('</think>')[-1] + '</s>\\n' -}}"
    "{%- elif m['role'] == 'tool' -%}{{- '<s>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response></s>\\n' -}}"
    "{%- else -%}{{- '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' -}}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<s>assistant\\n' -}}{%- endif -%}"
)


def test_tool_turn_is_what_follows_the_end_token_even_when_the_template_rewrites_earlier_turns(tokenizer):
    saved = tokenizer.chat_template
    tokenizer.chat_template = REWRITING_TEMPLATE
    try:
        ids = ChatRenderer(tokenizer, ["</s>"]).tool_turn([{"role": "tool", "content": "23"}], None)
    finally:
        tokenizer.chat_template = saved
    assert tokenizer.decode(ids) == "\n<s>user\n<tool_response>\n23\n</tool_response></s>\n<s>assistant\n"


def test_renderer_refuses_a_template_without_the_end_token(tokenizer):
    renderer = ChatRenderer(tokenizer, ["<unk>"])
    with pytest.raises(ValueError, match="does not end an assistant turn"):
        renderer.tool_turn([{"role": "tool", "content": "1"}], None)


def test_every_turn_tool_env_alternates_turns(tokenizer):
    env = EveryTurnTool(max_turns=3)
    out, _ = run(tokenizer, env, env.problems("train"), lambda text: "hi")
    assert [e.turns for e in out.episodes] == [3] * 4 and all(e.end == "max_turns" for e in out.episodes)


def test_scores_at_k_name_episodes_by_key_whatever_the_batch_size(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=3)
    problems = env.problems("test")

    def even_keys_know(prompts, keys, max_new_tokens):  # one turn, right exactly on even rollout keys
        texts = [problems[int(key) // 3]["answer"] if int(key) % 2 == 0 else "none" for key in keys]
        return [tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS] for text in texts]

    big, small = (scores_at_k(even_keys_know, tokenizer, env, problems, 3, max_new_tokens=32, eos_token_ids=[EOS],
                              batch_size=size) for size in (64, 4))
    assert torch.equal(big, small)
    assert big.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert avg_at_k(big) == pytest.approx(5 / 9) and best_at_k(big) == 1.0
    with pytest.raises(ValueError, match="k=0"):
        scores_at_k(even_keys_know, tokenizer, env, problems, 0, max_new_tokens=1, eos_token_ids=[EOS])


def test_template_variables_reach_the_chat_template(tokenizer):
    env = ToyLookup(max_tokens=2048, test_size=1)
    out = run_episodes(Scripted(tokenizer, lambda text: "pen"), tokenizer, env, env.problems("test"),
                       torch.tensor([0]), max_new_tokens=8, eos_token_ids=[EOS],
                       template_kwargs={"enable_thinking": False})
    prompt = tokenizer.decode(out.input_ids[0, : out.prompt_length])
    assert prompt.endswith("<s>assistant\n<think></think>")
