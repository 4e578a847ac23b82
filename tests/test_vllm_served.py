"""Served teachers against a real ``vllm serve`` on CPU (``make test-vllm``): the top-k path equals a direct
computation from the log-probabilities vLLM ships, the exact path equals the colocated teacher to 1e-5,
``tiplight fit`` trains with a served teacher, and a server killed mid-run ends the run in one sentence with
a checkpoint that resumes. One server per kind for the session (start-up costs about a minute on CPU)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import TOKENIZER_SIZE, build_model, build_tokenizer
from engines import needs_vllm
from served_vllm import VLLMServer
from test_cli import write_config
from test_estimate_memory import estimate_memory
from test_teachers import K, check_top_k_path, rollout
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiplight.objectives import ReverseKL
from tiplight.passes import score
from tiplight.teachers import VLLMHidden, VLLMTopK

pytestmark = needs_vllm
topk_json_bytes = estimate_memory.topk_json_bytes


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict:
    """Qwen3 teachers vLLM's CPU attention takes (head_dim 32): ``exact`` with the tokenizer's rows only,
    ``padded`` with 5 more (as Qwen's 151936 vs 151669), and the shared tokenizer."""
    root = tmp_path_factory.mktemp("vllm_teachers")
    paths = {"exact": build_model(root / "exact", hidden=64, seed=1, vocab=TOKENIZER_SIZE),
             "padded": build_model(root / "padded", hidden=64, seed=1)}
    for path in paths.values():
        build_tokenizer(path, chat_template=True)
    return {**paths, "root": root}


@pytest.fixture(scope="session")
def topk_server(teachers):
    server = VLLMServer(teachers["exact"], "topk", teachers["root"] / "topk.log")
    yield server
    server.kill()


@pytest.fixture(scope="session")
def hidden_server(teachers):
    server = VLLMServer(teachers["padded"], "hidden", teachers["root"] / "hidden.log")
    yield server
    server.kill()


@pytest.fixture(scope="session")
def student_and_tokenizer(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny["student"]).eval(), AutoTokenizer.from_pretrained(tiny["tokenizer"])


def connected(cls, url: str, tokenizer, **kwargs):
    teacher = cls(url=url, model="teacher", rows_per_request=2, **kwargs)
    teacher.connect(tokenizer, TOKENIZER_SIZE)
    return teacher


def test_start_up_checks_against_a_real_server(hidden_server, student_and_tokenizer):
    """The name must be served, and the endpoint must answer what the class asks (a pooling server has no
    prompt log-probabilities); the tokenizer and chat template probes pass: the student's are the teacher's."""
    _, tok = student_and_tokenizer
    with pytest.raises(ValueError, match=f"model.teacher.model='other' is not served at {hidden_server.url}; it serves 'teacher'"):
        VLLMHidden(url=hidden_server.url, model="other", head="unused").connect(tok, TOKENIZER_SIZE)
    with pytest.raises(ValueError, match=f"the teacher served at {hidden_server.url} does not take the student's "
                                         f"vocabulary of {TOKENIZER_SIZE} tokens with prompt_logprobs={K}"):
        VLLMTopK(url=hidden_server.url, model="teacher", k=K, retries=0).connect(tok, TOKENIZER_SIZE)


@torch.no_grad()
def test_exact_path_equals_the_colocated_teacher(teachers, hidden_server, student_and_tokenizer):
    student, tok = student_and_tokenizer
    served = connected(VLLMHidden, hidden_server.url, tok, head=str(teachers["padded"]))
    local = AutoModelForCausalLM.from_pretrained(teachers["padded"]).eval()
    r = rollout()
    kwargs = dict(micro_batch_size=2, vocab_size=TOKENIZER_SIZE, chunk_size=3, objective=ReverseKL())
    for a, b in zip(score(student, local, r, **kwargs), score(student, served, r, **kwargs)):
        mask = a.rollout.completion_mask
        for field in ("entropy", "rkl", "fkl"):
            torch.testing.assert_close(getattr(b.raw, field)[mask], getattr(a.raw, field)[mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.token_loss.loss[mask], a.token_loss.loss[mask], atol=1e-5, rtol=1e-5)
    traffic = served.traffic()
    print(f"served exact (d=64): {traffic['teacher/requests']:.0f} requests, {traffic['teacher/bytes_per_token']:.0f} "
          f"bytes per completion token, {traffic['teacher/bytes_per_position']:.0f} per position (base64 of "
          f"64 float32: {64 * 4 * 4 / 3:.0f})")
    assert 64 * 4 * 4 / 3 <= traffic["teacher/bytes_per_position"] < 64 * 4 * 4 / 3 + 60


@torch.no_grad()
def test_top_k_path_equals_a_direct_computation_from_the_shipped_log_probabilities(topk_server, student_and_tokenizer,
                                                                                   teachers):
    student, tok = student_and_tokenizer
    served = connected(VLLMTopK, topk_server.url, tok, k=K)
    r = rollout()
    shipped = torch.cat([p.teacher_hidden[p.rollout.completion_mask]
                         for p in score(student, served, r, micro_batch_size=2, vocab_size=TOKENIZER_SIZE,
                                        chunk_size=3)])  # [N, 1 + 2m]
    q = dense(shipped)
    check_top_k_path(student, served, r, q)
    # and what vLLM shipped is the teacher's own top-k (checked against the HF model, float32 rounding apart)
    local = AutoModelForCausalLM.from_pretrained(teachers["exact"]).eval()
    logits = local(input_ids=r.input_ids, attention_mask=r.attention_mask,
                   position_ids=(r.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    reference = logits[:, r.prompt_length - 1 : -1].log_softmax(-1)[r.completion_mask]  # [N, V]
    m = (shipped.shape[1] - 1) // 2
    ids = shipped[:, 1 + m :].long()
    torch.testing.assert_close(shipped[:, 1 : 1 + m], reference.gather(-1, ids), atol=1e-4, rtol=1e-4)
    assert (reference.topk(K).indices.sort().values == q.topk(K).indices.sort().values).all()
    traffic = served.traffic()
    estimated = topk_json_bytes(K, TOKENIZER_SIZE, token_chars=1)  # what estimate_memory.py sizes it by
    print(f"served top-{K}: {traffic['teacher/requests']:.0f} requests, {traffic['teacher/bytes_per_token']:.0f} "
          f"bytes per completion token, {traffic['teacher/bytes_per_position']:.0f} per position "
          f"(estimate_memory.py: {estimated:.0f} + each answer's own fields)")
    assert estimated < traffic["teacher/bytes_per_position"] < 1.5 * estimated


def dense(shipped: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` log-probabilities from packed rows ``[fill, logp_1..m, id_1..m]``, one position at a time."""
    m = (shipped.shape[1] - 1) // 2
    out = torch.empty(len(shipped), TOKENIZER_SIZE)
    for i, row in enumerate(shipped):
        out[i] = row[0]
        for logp, token in zip(row[1 : 1 + m].tolist(), row[1 + m :].long().tolist()):
            out[i, token] = logp
    return out


def served_fit_config(tmp_path, tiny, prompts_file, url: str, steps: int, name: str = "served.yaml"):
    config = yaml.safe_load(write_config(tmp_path / "run.yaml", tiny, prompts_file).read_text())
    config["model"]["teacher"] = {"class_path": "tiplight.teachers.VLLMTopK",
                                  "init_args": {"url": url, "model": "teacher", "k": K, "retries": 1,
                                                "backoff_s": 0.1, "timeout_s": 30}}
    config["model"]["objective"] = {"class_path": "TopKDivergence", "init_args": {"k": K}}
    config["data"]["init_args"]["max_prompt_tokens"] = 64  # within the server's --max-model-len
    config["trainer"].update(max_steps=steps, limit_val_batches=0, logger={
        "class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "opd"}})
    config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                           "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 1,
                                                         "save_top_k": -1}})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def fit(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiplight.cli", "fit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_tiplight_fit_trains_with_a_served_teacher(tiny, prompts_file, tmp_path, topk_server):
    config = served_fit_config(tmp_path, tiny, prompts_file, topk_server.url, steps=2)
    out, err = fit("--config", str(config)).communicate(timeout=600)
    assert "tiplight: trained student" in out, err[-3000:]
    steps = [r for r in csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()) if r.get("teacher/requests")]
    assert len(steps) == 2 and all(float(r["teacher/requests"]) == 1 for r in steps)  # 4 rollouts, one request
    assert all(float(r["train/loss"]) > 0 for r in steps)
    for r in steps:
        print(f"served top-{K} fit step: {float(r['teacher/requests']):.0f} requests, {float(r['teacher/bytes']):.0f} "
              f"bytes ({float(r['teacher/bytes_per_token']):.0f} per completion token), waited "
              f"{float(r['teacher/wait_s']):.3f} s of a {float(r['time/score']):.3f} s scoring pass")


def test_a_killed_server_ends_the_run_in_one_sentence_with_a_checkpoint_that_resumes(
        tiny, prompts_file, tmp_path, topk_server, hidden_server, teachers):
    """Kills the session's top-k server: the last test of this file to use it."""
    config = served_fit_config(tmp_path, tiny, prompts_file, topk_server.url, steps=200)
    run = fit("--config", str(config))
    deadline = time.monotonic() + 300
    while not list((tmp_path / "ckpt").glob("*step=1.ckpt")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    topk_server.kill()
    _, err = run.communicate(timeout=300)
    last = err.strip().splitlines()[-1]
    ckpt = next(tmp_path.rglob("interrupted.ckpt"))
    assert run.returncode == 2 and last.startswith(f"tiplight: error: the served teacher at {topk_server.url}"), err[-3000:]
    assert last.endswith(f"resume with --ckpt_path {ckpt}."), last
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= step < 200
    # the checkpoint holds no teacher: the run resumes against another server (here the exact one), one step more
    resumed = fit("--config", str(config), "--ckpt_path", str(ckpt), "--trainer.max_steps", str(step + 1),
                  "--model.teacher", "tiplight.teachers.VLLMHidden", "--model.teacher.url", hidden_server.url,
                  "--model.teacher.model", "teacher", "--model.teacher.head", str(teachers["padded"]),
                  "--model.objective", "ReverseKL")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert list((tmp_path / "ckpt").glob(f"*step={step + 1}.ckpt"))
