"""Fixtures for the environment tests: a character tokenizer whose chat template renders tools and tool
turns the way Qwen3's does (tool schemas in the system turn, tool results as a user turn in
<tool_response> tags), scripted turn generators, and an environment whose every turn calls a tool."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from conftest import TOKENIZER_SIZE, build_model, build_tokenizer

from tiplight.envs import Environment, Episode, Tool

EXTRA = list("<>_\":[]#'") + list(string.ascii_uppercase)  # the characters of tool calls, JSON and names
VOCAB = TOKENIZER_SIZE + len(EXTRA)
EOS, PAD = 2, 0
TOOL_TEMPLATE = "".join(line.strip() for line in r"""
{%- if messages[0]['role'] == 'system' or tools -%}
  {{- '<s>system\n' -}}
  {%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] + '\n' -}}{%- endif -%}
  {%- if tools -%}
    {{- '# tools\n<tools>' -}}
    {%- for t in tools -%}{{- '\n' + (t | tojson) -}}{%- endfor -%}
    {{- '\n</tools>' -}}
  {%- endif -%}
  {{- '</s>\n' -}}
{%- endif -%}
{%- for m in messages -%}
  {%- if m['role'] == 'tool' -%}
    {{- '<s>user\n<tool_response>\n' + m['content'] + '\n</tool_response></s>\n' -}}
  {%- elif m['role'] != 'system' -%}
    {{- '<s>' + m['role'] + '\n' + m['content'] + '</s>\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<s>assistant\n' -}}
  {%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think></think>' -}}{%- endif -%}
{%- endif -%}
""".splitlines())


def tool_tokenizer(out: Path):
    from transformers import AutoTokenizer

    build_tokenizer(out, extra=EXTRA)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def tool_model(out: Path, seed: int = 2) -> Path:
    return build_model(out, "qwen3", 64, seed=seed, vocab=VOCAB + 5)  # head_dim 32: vLLM CPU has no 16


def call(name: str, **arguments: Any) -> str:
    import json

    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class Scripted:
    """A ``TurnGenerate`` that writes ``respond(conversation so far, as text)`` + EOS for each row, cut to the
    turn's budget; it records the size of every batch it is called with."""

    def __init__(self, tokenizer, respond, eos: bool = True) -> None:
        self.tokenizer, self.respond, self.eos = tokenizer, respond, eos
        self.batches: list[int] = []

    def __call__(self, prompts: list[list[int]], keys: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
        self.batches.append(len(prompts))
        outs = []
        for prompt in prompts:
            text = self.respond(self.tokenizer.decode(prompt, skip_special_tokens=True))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + ([EOS] if self.eos else [])
            outs.append(ids[:max_new_tokens])
        return outs


class EveryTurnTool(Environment):
    """Every turn gets one tool message back (whatever the model wrote, EOS or not) until ``max_turns``: a
    loop test with a random model still has tool turns."""

    def problems(self, split):
        return [{"id": f"e{i}", "prompt": f"task {i}"} for i in range(4)]

    def initial_messages(self, problem):
        return [{"role": "user", "content": problem["prompt"]}]

    def tools(self, problem):
        return {"echo": Tool("echo", "echo", {"type": "object", "properties": {}}, lambda: "echo")}

    def end_reason(self, episode: Episode, text: str, finished: bool):
        return "max_turns" if episode.turns >= self.max_turns else None

    def execute(self, episodes, texts):
        return [[{"role": "tool", "name": "echo", "content": f"result {e.turns}"}] for e in episodes]

    def score(self, episode):
        return 0.0
