"""The embedded agentic toy world: ``ToyLookup`` (prices only through the ``price`` tool), a tokenizer with a
chat template that renders tool turns, and the build recipe of a teacher that uses the tool well and a
student that uses it worse: ``tiplight toy build --world agent --out DIR``.

Both models are supervised on whole episodes written by the rules below and laid out exactly as the
rollout loop lays them out (``ChatRenderer``: the opening prompt, the student's turns as sampled tokens,
the template's tool turns), with the loss on the assistant turns only. The teacher's episodes always
look every item up, think the running best affordable price (one digit per answer, each a function of
the previous one, the answer's price and the budget) and name its item; the student's skip the tool in
``STUDENT_SKIP`` of its episodes and name the first listed item unseen. So the student has the teacher's
capacity and has seen the right use of the tool, but often answers without it: on-policy distillation,
scoring only the student's own tokens against the teacher, can teach it to call the tool.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tiplight.envs import ChatRenderer, ToyLookup, parse_tool_calls
from tiplight.envs.tools import CLOSE, OPEN
from tiplight.envs.toy import ITEMS
from tiplight.padding import right_pad
from tiplight.toy.recipe import scaled
from tiplight.toy.tokenizer import build_tokenizer
from tiplight.toy.train import ModelSpec, SFTSpec, make_model, train_sft

CALL_HEAD, CALL_TAIL = '{"name": "price", "arguments": {"item": "', '"}}'
ROLES = ("<user>", "<assistant>", "<tool>", "<think>", "</think>")
PHRASES = ("budget ", ". items: ", ". which is the dearest item you can afford?")
WORDS = (OPEN, CLOSE, CALL_HEAD, CALL_TAIL, *ROLES, *PHRASES, *ITEMS)
# system messages and tool schemas are left out: the toy models know their one tool
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}{% if m['role'] == 'user' %}<user>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<assistant>{{ m['content'] }}</s>"
    "{% elif m['role'] == 'tool' %}<tool>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MODEL = ModelSpec(hidden_size=96, num_layers=4, num_heads=3, intermediate_size=288)
TEACHER_SFT = SFTSpec(steps=2500, batch_size=32, lr=3e-3, warmup=100)
# constant after warm-up, as the math world's student (toy.recipe): an annealed student resists OPD's fresh AdamW
STUDENT_SFT = replace(TEACHER_SFT, min_lr_frac=1.0)
STUDENT_SKIP = 0.6  # the share of the student's training episodes that answer without the tool
TRAIN_EPISODES = 8_000
PROBE = 100  # test problems scored while a model trains and at the end of the build (Avg@4 at temperature 1)


def environment(**kwargs: Any) -> ToyLookup:
    """The agent world's environment, as ``configs/toy_agent.yaml`` configures it."""
    return ToyLookup(**{"items_per_problem": 3, "max_price": 9, "train_size": TRAIN_EPISODES, "named_prices": True,
                        "max_turns": 4, "max_tokens": 160, **kwargs})  # 160: within the models' 256 positions


def build_agent_tokenizer() -> PreTrainedTokenizerFast:
    """Characters plus single tokens for the tool-call pieces, roles, prompt phrases and item names."""
    return build_tokenizer(WORDS, CHAT_TEMPLATE)


def call(item: str) -> str:
    """One ``price`` call in the Hermes format the tool parser reads."""
    return f"{OPEN}{CALL_HEAD}{item}{CALL_TAIL}{CLOSE}"


def teacher_turns(problem: dict[str, Any]) -> list[str]:
    """Look every item up in one turn; then think the running best affordable price over the answers in
    order (``-`` while none is affordable) and name the item of the last one."""
    items, budget, best, thoughts = sorted(problem["prices"]), problem["budget"], 0, ""
    for item in items:
        price = problem["prices"][item]
        best = max(best, price if price <= budget else 0)
        thoughts += str(best) if best else "-"
    return ["".join(call(item) for item in items), f"<think>{thoughts}</think>{problem['answer']}"]


def student_turns(problem: dict[str, Any], rng: random.Random) -> list[str]:
    """The teacher's turns, or (``STUDENT_SKIP`` of the time) the first listed item, named without a look-up."""
    if rng.random() < STUDENT_SKIP:
        return [sorted(problem["prices"])[0]]
    return teacher_turns(problem)


def episode_tokens(env: ToyLookup, renderer: ChatRenderer, problem: dict[str, Any], turns: list[str],
                   eos_id: int) -> dict[str, list[int]]:
    """``ids`` of the whole episode as the rollout loop lays it out, and ``labels`` (-100 off the assistant's
    turns, which end with EOS)."""
    episode, schemas = env.start(problem), env.tool_schemas(problem)
    ids = renderer.prompt(episode.messages, schemas)
    labels = [-100] * len(ids)
    for text in turns:
        turn = [*renderer.encode(text), eos_id]
        ids, labels = ids + turn, labels + turn
        episode.messages.append({"role": "assistant", "content": text})
        if parse_tool_calls(text):
            tool = renderer.tool_turn(env.execute([episode], [text])[0], schemas)
            ids, labels = ids + tool, labels + [-100] * len(tool)
    return {"ids": ids, "labels": labels}


def sft_episode_batch(rows: list[dict[str, list[int]]], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` ``[B, T]`` of ``episode_tokens`` rows."""
    ids = [r["ids"] for r in rows]
    return {"input_ids": right_pad(ids, tokenizer.pad_token_id),
            "attention_mask": right_pad([[1] * len(i) for i in ids], 0),
            "labels": right_pad([r["labels"] for r in rows], -100)}


def build_agent(out: Path, *, budget: float = 1.0, seed: int = 0, episodes: int = TRAIN_EPISODES) -> dict[str, Any]:
    """Train the agent world's teacher and student into ``out`` (``teacher/``, ``student/``, ``build.json``).

    ``budget`` scales the supervised steps (1.0 is the shipped recipe); the teacher uses ``seed``, the
    student ``seed + 1``; ``episodes``: training problems (tests use a few). Returns the ``build.json`` content."""
    if budget <= 0:
        raise ValueError(f"budget={budget} must be > 0 (1.0 is the shipped recipe)")
    start, out = time.perf_counter(), Path(out)
    tokenizer, env = build_agent_tokenizer(), environment(train_size=episodes)
    renderer = ChatRenderer(tokenizer, [tokenizer.eos_token])
    problems, rng, probe = env.problems("train"), random.Random(seed), env.problems("test")[:PROBE]
    turns = {"teacher": [teacher_turns(p) for p in problems], "student": [student_turns(p, rng) for p in problems]}
    specs = {"teacher": scaled(TEACHER_SFT, budget), "student": scaled(STUDENT_SFT, budget)}
    report: dict[str, Any] = {"command": f"tiplight toy build --world agent --out {out} --budget {budget} --seed {seed}",
                              "model": asdict(MODEL), "student_skip": STUDENT_SKIP, "train_episodes": len(problems),
                              "probe_problems": len(probe)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see toy.recipe: one thread is faster on a busy 2-core machine and repeatable
    try:
        for offset, name in enumerate(("teacher", "student")):
            rows = [episode_tokens(env, renderer, p, t, tokenizer.eos_token_id) for p, t in zip(problems, turns[name])]
            model, spec = make_model(MODEL, tokenizer, seed=seed + offset), specs[name]
            print(f"[toy build agent] {name}: {sum(p.numel() for p in model.parameters()):,} params, {spec.steps} steps")
            hook = lambda _, m=model: f"probe avg@4 {probe_score(m, tokenizer, probe):.2f}"  # noqa: E731
            stats = train_sft(model, rows, tokenizer, spec, seed=seed + offset, batch_fn=sft_episode_batch, hook=hook,
                              log_every=300)
            model.save_pretrained(out / name)
            tokenizer.save_pretrained(out / name)
            report[name] = {"seed": seed + offset, "spec": asdict(spec), **stats,
                            "probe_score": probe_score(model, tokenizer, probe),
                            "probe_greedy": float(scores(model, tokenizer, probe).mean())}
    finally:
        torch.set_num_threads(threads)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    (out / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def scores(model: Any, tokenizer: PreTrainedTokenizerBase, problems: list[dict[str, Any]], *, k: int = 1,
           temperature: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``[n, k]`` episode scores of ``model`` on ``problems`` (``HFGenerate``, the rollout loop)."""
    from tiplight.envs import engine_turns, scores_at_k
    from tiplight.rollout import HFGenerate, Sampling

    eos = [tokenizer.eos_token_id]
    turns = engine_turns(HFGenerate(), model.eval(), sampling=Sampling(temperature=temperature, max_new_tokens=32),
                         seed=seed, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
                         vocab_size=len(tokenizer))
    return scores_at_k(turns, tokenizer, environment(), problems, k, max_new_tokens=32, eos_token_ids=eos,
                       batch_size=256)


def probe_score(model: Any, tokenizer: PreTrainedTokenizerBase, problems: list[dict[str, Any]]) -> float:
    """Avg@4 at temperature 1 on ``problems``, as ``configs/toy_agent.yaml`` evaluates."""
    return float(scores(model, tokenizer, problems, k=4, temperature=1.0).mean())
