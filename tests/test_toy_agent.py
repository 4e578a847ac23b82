"""The embedded agentic toy world: its tokenizer and chat template, the rule-written episodes the models
learn from (laid out exactly as the rollout loop lays out a rollout), the build recipe, the shipped pair,
and ``tiplight fit --config configs/toy_agent.yaml`` through the command line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tiplight.envs import ChatRenderer, run_episodes
from tiplight.toy import agent

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tiplight" / "toy" / "assets" / "agent"


def test_the_config_builds_the_environment_the_models_were_built_for():
    config = yaml.safe_load((ROOT / "configs" / "toy_agent.yaml").read_text())
    args = config["model"]["environment"]["init_args"]
    env = agent.environment()
    for name in ("items_per_problem", "max_price", "train_size", "seed", "named_prices", "max_turns", "max_tokens"):
        assert args[name] == getattr(env, name), name


def test_teacher_episodes_solve_every_problem_and_student_episodes_often_skip_the_tool():
    env, rng = agent.environment(train_size=200), random.Random(0)
    problems = env.problems("train")
    rows = [agent.student_turns(p, rng) for p in problems]
    skipped = sum(len(r) == 1 for r in rows) / len(rows)
    assert skipped == pytest.approx(agent.STUDENT_SKIP, abs=0.1)
    scripted = [agent.teacher_turns(p) for p in problems[:20]]
    out = replay(env, problems[:20], scripted)
    assert out.scores(env).tolist() == [1.0] * 20
    assert all(e.tool_calls == env.items_per_problem for e in out.episodes)


def replay(env, problems, turns):
    """Run the rollout loop with a generator that writes the given turns (+ EOS) for each row."""
    tokenizer = agent.build_agent_tokenizer()
    eos = tokenizer.eos_token_id
    index = {tuple(ChatRenderer(tokenizer, ["</s>"]).prompt(env.initial_messages(p), None)): i
             for i, p in enumerate(problems)}
    calls = {i: 0 for i in range(len(problems))}

    def generate(prompts, keys, max_new_tokens):
        outs = []
        for prompt in prompts:
            i = next(row for start, row in index.items() if tuple(prompt[: len(start)]) == start)
            outs.append([*tokenizer(turns[i][calls[i]], add_special_tokens=False)["input_ids"], eos])
            calls[i] += 1
        return outs

    return run_episodes(generate, tokenizer, env, problems, torch.arange(len(problems)), max_new_tokens=32,
                        eos_token_ids=[eos])


def test_training_episodes_are_laid_out_as_the_rollout_loop_lays_them_out():
    env = agent.environment(train_size=50)
    problems, rng = env.problems("train")[:12], random.Random(1)
    turns = [agent.student_turns(p, rng) for p in problems]
    out = replay(env, problems, turns)
    tokenizer = agent.build_agent_tokenizer()
    renderer = ChatRenderer(tokenizer, [tokenizer.eos_token])
    for i, (problem, script) in enumerate(zip(problems, turns)):
        row = agent.episode_tokens(env, renderer, problem, script, tokenizer.eos_token_id)
        real = out.attention_mask[i].bool()
        assert out.input_ids[i][real].tolist() == row["ids"]
        assert out.sampled_mask[i][real].tolist() == [label != -100 for label in row["labels"]]


def test_the_tokenizer_keeps_tool_calls_whole_and_decodes_them_back():
    tokenizer = agent.build_agent_tokenizer()
    text = agent.call("lamp") + "<think>7</think>hat"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 + 4 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_build_recipe_writes_a_loadable_pair(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = agent.build_agent(tmp_path, budget=0.002, episodes=64)
    assert json.loads((tmp_path / "build.json").read_text()) == report
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert AutoTokenizer.from_pretrained(tmp_path / name).get_vocab() == agent.build_agent_tokenizer().get_vocab()
        assert model.config.vocab_size == len(agent.build_agent_tokenizer())
        assert 0.0 <= report[name]["probe_score"] <= 1.0 and report[name]["steps"] == 5


def test_the_shipped_teacher_uses_the_tool_well_and_the_student_worse():
    build = json.loads((ASSETS / "build.json").read_text())
    assert build["teacher"]["probe_score"] >= build["student"]["probe_score"] + 0.2
    from transformers import AutoModelForCausalLM

    tokenizer = agent.build_agent_tokenizer()
    problems = agent.environment().problems("test")[:40]
    runs = {}
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(ASSETS / name)
        runs[name] = agent.scores(model, tokenizer, problems)  # greedy: as build.json's probe
    assert float(runs["teacher"].mean()) > float(runs["student"].mean())


@pytest.mark.slow
def test_toy_agent_config_trains_through_the_command_line(tmp_path):
    """``tiplight fit --config configs/toy_agent.yaml`` with 2 steps and 8 test problems: the score before
    and after is printed and written to summary.json."""
    short = tmp_path / "short.yaml"
    config = yaml.safe_load((ROOT / "configs" / "toy_agent.yaml").read_text())
    callbacks = config["trainer"]["callbacks"]
    callbacks[0]["init_args"]["limit"] = 8
    short.write_text(yaml.safe_dump({"trainer": {"max_steps": 2, "logger": False, "enable_progress_bar": False,
                                                 "default_root_dir": str(tmp_path), "callbacks": callbacks}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tiplight.cli", "fit", "--config", str(ROOT / "configs" / "toy_agent.yaml"),
               "--config", str(short)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "environment accuracy" in done.stdout and "after 2 steps" in done.stdout
    assert "avg@4" in done.stdout + done.stderr and "best@4" in done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["accuracy_before"] <= 1 and 0 <= summary["accuracy_after"] <= 1


def test_an_environment_with_prompt_data_is_one_sentence_at_start_up(tmp_path):
    """``model.environment`` with single-turn prompt data would silently train single-turn: refused."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tiplight.cli", "fit", "--config", str(ROOT / "configs" / "toy_agent.yaml"),
               "--data", "tiplight.data.PromptDataModule", "--data.train_files", "[toy_train]",
               "--trainer.callbacks", "[]", "--trainer.logger", "false", f"--trainer.default_root_dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode != 0
    assert "model.environment is set but data is PromptDataModule" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
