"""Training on an environment: a DistillModule with ``environment`` set samples multi-turn episodes and
scores, selects and trains only the student's own tokens (TIP §6.6), with tool turns as context.

The naive reference runs both models over the whole episode with full ``[R, L, V]`` logits (the student's
with grad), takes reverse KL at every position and weights it by the student-token mask built from the
episode's segments, not from the rollout's masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from agent_fixtures import TOOL_TEMPLATE, EveryTurnTool, tool_model, tool_tokenizer
from helpers import Recording, make_trainer

import tiplight.module
from tiplight.args import Optimization
from tiplight.envs import EpisodeDataModule, sample_episodes
from tiplight.losses import reverse_kl
from tiplight.rollout import Sampling
from tiplight.selection import AllTokens, SoftOrTopK

SCRIPT = Path(__file__).with_name("agent_distributed_run.py")


def agent_pair(root: Path) -> dict[str, str]:
    """Student and teacher directories (tiny Qwen3s) whose tokenizer carries the tool chat template."""
    tokenizer = tool_tokenizer(root / "tok")
    tokenizer.chat_template = TOOL_TEMPLATE
    paths = {}
    for name, seed in (("student", 2), ("teacher", 3)):
        paths[name] = str(tool_model(root / name, seed=seed))
        tokenizer.save_pretrained(paths[name])
    return paths


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return agent_pair(tmp_path_factory.mktemp("agent_pair"))


class Episodes:
    """Records the AgentRollout behind every training rollout (its segments name the student's tokens)."""

    def __init__(self, monkeypatch):
        self.seen = []
        monkeypatch.setattr(tiplight.module, "sample_episodes", self)

    def __call__(self, *args, **kwargs):
        out = sample_episodes(*args, **kwargs)
        self.seen.append(out)
        return out


def student_positions(agent) -> torch.Tensor:
    """``[R, T]`` True on the tokens of the episode's student segments."""
    mask = torch.zeros_like(agent.input_ids, dtype=torch.bool)
    for i, segments in enumerate(agent.segments):
        for s in segments:
            mask[i, s.start : s.end] = s.kind == "student"
    return mask


def fit(pair, tmp_path, selector, steps=1, lr=0.0):
    module = Recording(student=pair["student"], teacher=pair["teacher"], selector=selector,
                       environment=EveryTurnTool(max_turns=3, max_tokens=256), sampling=Sampling(max_new_tokens=6),
                       optimization=Optimization(lr_schedule="constant", grad_clip=None), optimizer=lambda p: torch.optim.SGD(p, lr=lr))
    data = EpisodeDataModule(prompts_per_step=2, rollouts_per_prompt=2)
    make_trainer(tmp_path, max_steps=steps).fit(module, data)
    return module


def test_only_student_tokens_are_valid_and_selected(pair, tmp_path, monkeypatch):
    episodes = Episodes(monkeypatch)
    module = fit(pair, tmp_path, AllTokens())
    agent, record = episodes.seen[-1], module.last_step
    student = student_positions(agent)[:, agent.prompt_length :]  # [R, C]
    tool = agent.attention_mask.bool()[:, agent.prompt_length :] & ~student
    assert tool.any() and student.any()
    assert torch.equal(record.rollout.completion_mask, student)
    assert torch.equal(record.rollout.attention_mask, agent.attention_mask)  # tool turns stay context
    assert torch.equal(record.stats.valid, student)
    assert torch.equal(record.weights > 0, student)  # AllTokens keeps every student token, no tool token
    assert module.record[-1]["valid"] == int(student.sum())


def test_the_per_rollout_budget_counts_student_tokens(pair, tmp_path, monkeypatch):
    episodes = Episodes(monkeypatch)
    module = fit(pair, tmp_path, SoftOrTopK(0.5))
    agent, keep = episodes.seen[-1], module.last_step.weights > 0
    student = student_positions(agent)[:, agent.prompt_length :]
    assert not (keep & ~student).any()  # tool tokens are never selected
    assert keep.sum(1).tolist() == [int(0.5 * m) for m in student.sum(1).tolist()]


def final_norm_grads(module):
    """Capture d loss / d (the student's final hidden states ``[R, L-1, d]``) in every backward."""
    grads = []

    def keep_grad(_, __, output):
        if output.requires_grad:
            output.register_hook(grads.append)

    module.student.get_decoder().norm.register_forward_hook(keep_grad)
    return grads


def test_gradient_is_zero_at_tool_positions_and_equals_the_naive_reference(pair, tmp_path, monkeypatch):
    episodes = Episodes(monkeypatch)

    class Hooked(Recording):
        def configure_model(self):
            super().configure_model()
            self.hidden_grads = final_norm_grads(self)

    module = Hooked(student=pair["student"], teacher=pair["teacher"], selector=SoftOrTopK(0.5),
                    environment=EveryTurnTool(max_turns=3, max_tokens=256), sampling=Sampling(max_new_tokens=6),
                    optimization=Optimization(lr_schedule="constant", grad_clip=None), optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    make_trainer(tmp_path, max_steps=1).fit(module, EpisodeDataModule(prompts_per_step=2, rollouts_per_prompt=2))
    agent, weights = episodes.seen[-1], module.last_step.weights
    p = agent.prompt_length
    student = student_positions(agent)  # [R, T]
    tool = agent.attention_mask.bool() & ~student
    tool[:, :p] = False  # the prompt is context too, but it predicts nothing here
    assert tool[:, p:].any()
    hidden_grad = module.hidden_grads[-1][:, p - 1 :]  # [R, C, d]: column j predicts token p + j
    assert (hidden_grad[tool[:, p:]] == 0).all()
    assert (hidden_grad[weights == 0] == 0).all() and (hidden_grad[weights > 0].abs().sum(-1) > 0).all()

    # the naive reference: full logits over the whole episode, KL at every position, the segments' mask
    ids, mask = agent.input_ids, agent.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        t = module.teacher(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    s = module.student(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # [R, T, V]
    v = module.vocab_size
    per_token = reverse_kl(s[:, :-1, :v].flatten(0, 1), t[:, :-1, :v].flatten(0, 1)).view(len(ids), -1)  # [R, T-1]
    keep = torch.zeros_like(per_token)
    keep[:, p - 1 :] = weights
    assert not (keep > 0)[~student[:, 1:]].any()
    loss = (per_token * keep).sum() / (keep > 0).sum()
    params = [q for q in module.student.parameters() if q.requires_grad]
    want = torch.autograd.grad(loss, params)
    for name, got, ref in zip([n for n, q in module.student.named_parameters() if q.requires_grad],
                              [q.grad for q in params], want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6, msg=name)


def run_distributed(devices: int, pair, out: Path) -> dict:
    cmd = [sys.executable, str(SCRIPT), str(devices), pair["teacher"], pair["student"], str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.distributed
def test_episodes_and_steps_reproduce_per_key_on_one_and_two_processes(pair, tmp_path):
    one = run_distributed(1, pair, tmp_path / "one.json")
    two = run_distributed(2, pair, tmp_path / "two.json")
    assert one["episodes"] == two["episodes"]  # every rollout key: the same tokens and sampled flags
    assert len(one["episodes"]) == 2 * 8  # two steps of 4 problems x 2 rollouts
    for a, b in zip(one["steps"], two["steps"], strict=True):
        assert a["kept"] == b["kept"] and a["valid"] == b["valid"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    for key, value in one["params"].items():
        assert two["params"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_diagnostics_grey_out_tool_tokens_and_count_student_tokens_only(pair, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from tiplight.diagnostics import plots
    from tiplight.diagnostics.table import from_step, read_jsonl

    episodes = Episodes(monkeypatch)
    module = fit(pair, tmp_path, SoftOrTopK(0.5))
    agent, record = episodes.seen[-1], module.last_step
    student = student_positions(agent)[:, agent.prompt_length :]
    tool = agent.attention_mask.bool()[:, agent.prompt_length :] & ~student
    scored = from_step(record, AutoTokenizer.from_pretrained(pair["student"]), label="kept")
    assert torch.equal(scored.context, tool)
    html = plots.heatmap_html(scored, 0, record.weights)
    assert html.count('data-segment="tool"') == int(tool[0].sum()) > 0
    assert html.count('class="tok"') == int(tool[0].sum() + student[0].sum())
    assert all('data-kept="0"' in span for span in html.split("<span")[1:] if 'data-segment="tool"' in span)
    assert "tool tokens" in plots.heatmap_png(scored, None, 0, record.weights)._suptitle.get_text()
    rows = scored.records(record.weights)
    assert len(rows) == int(student.sum()) and all(student[r["rollout"], r["position"]] for r in rows)
    # kept fraction and quadrant shares: over the student's tokens only
    kept = (record.weights > 0).sum() / student.sum()
    assert float(module.trainer.callback_metrics["train/kept_fraction"]) == pytest.approx(float(kept))
    ids = scored.quadrants()
    for q in ("Q1", "Q2", "Q3", "Q4"):
        direct = float((ids[student] == ("Q1", "Q2", "Q3", "Q4").index(q) + 1).double().mean())
        assert float(module.trainer.callback_metrics[f"quadrant/{q}_all"]) == pytest.approx(direct)
    path = scored.to_jsonl(tmp_path / "rollouts.jsonl")  # the context survives the file
    assert torch.equal(read_jsonl(path)[0].context, tool[:, : read_jsonl(path)[0].context.shape[1]])


class Scoring(EveryTurnTool):
    """EveryTurnTool whose score depends on what the student wrote: the parity of its last turn's length."""

    def score(self, episode):
        return float(len(episode.last_text) % 2)


def evaluate_environment(pair, root: Path, batch_size: int):
    from tiplight.evals import MathEvalCallback

    evals = MathEvalCallback(benchmarks=["environment"], num_samples=3, temperature=1.0, max_new_tokens=6, limit=3,
                             batch_size=batch_size, at_fit_start=True, at_validation=False)
    module = Recording(student=pair["student"], teacher=pair["teacher"], environment=Scoring(max_turns=2, max_tokens=256),
                       sampling=Sampling(max_new_tokens=6), optimization=Optimization(lr_schedule="constant"))
    data = EpisodeDataModule(prompts_per_step=2, rollouts_per_prompt=1)
    make_trainer(root, max_steps=1, callbacks=[evals]).fit(module, data)
    lines = [json.loads(x) for x in (root / "evals" / "fit_start_environment.jsonl").read_text().splitlines()]
    return lines, evals.results["fit_start"]["environment"]


def test_the_evaluation_callback_scores_the_environment_test_split(pair, tmp_path):
    lines, metrics = evaluate_environment(pair, tmp_path / "one", batch_size=1)
    scores = torch.tensor([line["scores"] for line in lines])  # [3 problems, 3 episodes]
    assert scores.shape == (3, 3) and [line["id"] for line in lines] == ["e0", "e1", "e2"]
    assert all(score == len(text) % 2 for line in lines for score, text in zip(line["scores"], line["responses"]))
    assert metrics["avg@3"] == pytest.approx(float(scores.mean())) == metrics["accuracy"]
    assert metrics["best@3"] == pytest.approx(float(scores.max(1).values.mean()))
    assert metrics["turns"] == 2.0  # every turn calls a tool: each episode ends at max_turns
    assert evaluate_environment(pair, tmp_path / "three", batch_size=3)[0] == lines  # keys, not batches
