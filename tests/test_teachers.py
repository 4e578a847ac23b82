"""Served teachers against a stand-in for ``vllm serve`` (tests/served_fixtures.py, no vLLM needed): the top-k
path's statistics and losses against a direct computation from the shipped log-probabilities, the exact
path against the colocated teacher, start-up checks, bounded retries and one-sentence failures, and a
``tiplight fit`` whose server dies mid-run and that resumes from the checkpoint it leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import TOKENIZER_SIZE, build_model, build_tokenizer
from served_fixtures import FakeVLLM
from test_cli import write_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiplight.cli import main
from tiplight.objective import selected_loss_sum
from tiplight.objectives import ReverseKL, SampledTokenPG, TokenContext, TopKDivergence
from tiplight.passes import score
from tiplight.rollout import Rollout
from tiplight.teachers import TeacherServerError, VLLMHidden, VLLMTopK, get_teacher, list_teachers

K = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A tokenizer, a student, a teacher with exactly the tokenizer's rows (top-k ids all real tokens) and
    one with padded rows (as Qwen's), loaded."""
    root = tmp_path_factory.mktemp("served")
    tok = build_tokenizer(root / "tok")
    paths = {"tok": tok, "student": build_model(root / "student", hidden=32, seed=2),
             "teacher": build_model(root / "teacher", hidden=48, seed=1, vocab=TOKENIZER_SIZE),
             "padded": build_model(root / "padded", hidden=48, seed=1)}
    for name in ("student", "teacher", "padded"):
        build_tokenizer(paths[name])
    loaded = {name: AutoModelForCausalLM.from_pretrained(p).eval() for name, p in paths.items() if name != "tok"}
    return {"paths": paths, "tokenizer": AutoTokenizer.from_pretrained(tok), **loaded}


@pytest.fixture
def fake(models):
    server = FakeVLLM(models["teacher"], models["tokenizer"])
    yield server
    server.close()


def rollout() -> Rollout:
    """3 rows, prompt width 4 (left-padded), completions of 6, 3 and 1 tokens (right-padded)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TOKENIZER_SIZE, (3, 10), generator=g)
    prompt = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]])
    completion = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5])
    ids = ids * torch.cat([prompt, completion], 1)  # pads are id 0
    return Rollout(ids, torch.cat([prompt, completion], 1), completion.bool(), 4)


def served(cls, url: str, tokenizer, **kwargs):
    teacher = cls(url=url, model="teacher", backoff_s=0.01, rows_per_request=2, **kwargs)
    teacher.connect(tokenizer, TOKENIZER_SIZE)
    return teacher


def direct_teacher_logprobs(teacher, r: Rollout) -> torch.Tensor:
    """``[N, V]`` at valid positions: the rebuilt teacher distribution by its definition, from ``teacher``'s
    own logits: the top-k and the sampled token's log-probabilities, the remaining mass spread evenly."""
    logits = teacher(input_ids=r.input_ids, attention_mask=r.attention_mask,
                     position_ids=(r.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    logp = logits[:, r.prompt_length - 1 : -1].log_softmax(-1)[r.completion_mask]  # [N, V]
    out = torch.empty_like(logp)
    for i, token in enumerate(r.completion_ids[r.completion_mask].tolist()):
        index = torch.tensor(sorted(set(logp[i].topk(K).indices.tolist()) | {token}))
        out[i] = ((1 - logp[i, index].exp().sum()) / (logp.shape[-1] - len(index))).log()
        out[i, index] = logp[i, index]
    return out


def student_logprobs(student, r: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's log-probabilities ``[N, V]`` and final hidden states ``[N, d]`` at valid positions."""
    ids, mask = r.input_ids[:, :-1], r.attention_mask[:, :-1]
    hidden = student.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
                                   ).last_hidden_state[:, r.prompt_length - 1 :][r.completion_mask]
    return student.get_output_embeddings()(hidden)[:, :TOKENIZER_SIZE].log_softmax(-1), hidden


@torch.no_grad()
def check_top_k_path(student, teacher: VLLMTopK, r: Rollout, q: torch.Tensor, tol: float = 1e-5) -> None:
    """Statistics, ``TopKDivergence`` and ``SampledTokenPG`` through ``score`` and ``selected_loss_sum`` with
    ``teacher`` equal their formulas written out against the teacher distribution ``q`` ``[N, V]``."""
    p, hidden = student_logprobs(student, r)  # [N, V], [N, d]
    parts = score(student, teacher, r, micro_batch_size=2, vocab_size=TOKENIZER_SIZE, chunk_size=3,
                  objective=ReverseKL())
    valid = [part.rollout.completion_mask for part in parts]
    rkl = torch.cat([part.raw.rkl[m] for part, m in zip(parts, valid)])
    fkl = torch.cat([part.raw.fkl[m] for part, m in zip(parts, valid)])
    torch.testing.assert_close(rkl, (p.exp() * (p - q)).sum(-1), atol=tol, rtol=tol)
    torch.testing.assert_close(fkl, (q.exp() * (q - p)).sum(-1), atol=tol, rtol=tol)
    shipped = torch.cat([part.teacher_hidden[m] for part, m in zip(parts, valid)])  # [N, 1 + 2m]
    heads = (student.get_output_embeddings(), teacher.get_output_embeddings())
    ones, tokens = torch.ones(len(hidden)), r.completion_ids[r.completion_mask]
    # TopKDivergence(k, tail): KL over the teacher's k shipped tokens and one bucket for the rest, by hand
    top = q.topk(K).indices
    s_k, t_k = p.gather(-1, top), q.gather(-1, top)
    s_k, t_k = (torch.cat([x, (1 - x.exp().sum(-1, keepdim=True)).log()], -1) for x in (s_k, t_k))
    got = selected_loss_sum(hidden, shipped, ones, *heads, TopKDivergence(k=K), TOKENIZER_SIZE, 3)
    torch.testing.assert_close(got, (s_k.exp() * (s_k - t_k)).sum(), atol=tol, rtol=tol)
    # SampledTokenPG (k1, ratio 1): -advantage = log P_S(token) - log P_T(token), the teacher's value shipped
    t_token, s_token = q.gather(-1, tokens[:, None])[:, 0], p.gather(-1, tokens[:, None])[:, 0]
    got = selected_loss_sum(hidden, shipped, ones, *heads, SampledTokenPG(), TOKENIZER_SIZE, 3,
                            context=TokenContext(tokens))
    torch.testing.assert_close(got, (s_token - t_token).sum(), atol=tol, rtol=tol)


@torch.no_grad()
def test_top_k_statistics_and_losses_equal_a_direct_computation(models, fake):
    r = rollout()
    teacher = served(VLLMTopK, fake.url, models["tokenizer"], k=K)
    check_top_k_path(models["student"], teacher, r, direct_teacher_logprobs(models["teacher"], r))
    assert fake.bodies[-1]["prompt_logprobs"] == K and len(fake.bodies[-1]["prompt"]) <= 2


def colocated_and_served(models, fake, objective, **kwargs):
    r = rollout()
    teacher = served(VLLMHidden, fake.url, models["tokenizer"], head=str(models["paths"]["padded"]), **kwargs)
    kwargs = dict(micro_batch_size=2, vocab_size=TOKENIZER_SIZE, chunk_size=3, objective=objective)
    return score(models["student"], models["padded"], r, **kwargs), score(models["student"], teacher, r, **kwargs), teacher


@torch.no_grad()
def test_exact_path_equals_the_colocated_teacher(models):
    fake = FakeVLLM(models["padded"], models["tokenizer"])
    try:
        local, remote, teacher = colocated_and_served(models, fake, ReverseKL())
    finally:
        fake.close()
    for a, b in zip(local, remote):
        mask = a.rollout.completion_mask
        for field in ("entropy", "rkl", "fkl"):
            torch.testing.assert_close(getattr(b.raw, field)[mask], getattr(a.raw, field)[mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.token_loss.loss[mask], a.token_loss.loss[mask], atol=1e-5, rtol=1e-5)
    traffic = teacher.traffic()
    assert traffic["teacher/requests"] == 2  # 3 rows, 2 a request
    assert 48 * 4 * 4 / 3 <= traffic["teacher/bytes_per_position"] < 48 * 4 * 4 / 3 + 40  # base64 of float32 x d_t


@torch.no_grad()
def test_exact_path_in_bfloat16_on_the_wire_halves_the_bytes(models):
    fake = FakeVLLM(models["padded"], models["tokenizer"])
    try:
        local, remote, teacher = colocated_and_served(models, fake, ReverseKL(), wire_dtype="bfloat16")
    finally:
        fake.close()
    mask = local[0].rollout.completion_mask
    assert remote[0].teacher_hidden.dtype == torch.bfloat16
    torch.testing.assert_close(remote[0].raw.rkl[mask], local[0].raw.rkl[mask], atol=1e-2, rtol=1e-2)
    assert 48 * 2 * 4 / 3 <= teacher.traffic()["teacher/bytes_per_position"] < 48 * 2 * 4 / 3 + 40  # base64, 2 B a value


def extra_args(name: str, models) -> dict:
    """Each registered served teacher's own required arguments (the contract suite covers them all)."""
    return {"VLLMTopK": {"k": K}, "VLLMHidden": {"head": str(models["paths"]["teacher"])}}[name]


@pytest.mark.parametrize("name", list_teachers())
@torch.no_grad()
def test_served_teacher_contract(models, fake, name):
    """Connected to a server: ``[r, C, D]`` rows for every micro-batch (0 past each row's end), whose head
    gives ``[n, V]`` logits; one request for up to ``rows_per_request`` rows; repr shows the settings."""
    teacher = get_teacher(name, url=fake.url, model="teacher", **extra_args(name, models))
    assert repr(teacher).startswith(f"{name}(endpoint=Endpoint(url='{fake.url}'")
    teacher.connect(models["tokenizer"], TOKENIZER_SIZE)
    fake.step_requests = 0
    r = rollout()
    rows = teacher.submit(r).result()
    assert fake.step_requests == 1 and rows.shape == (3, 6, teacher.width)
    assert (rows[~r.completion_mask] == 0).all() and (rows[r.completion_mask] != 0).any(-1).all()
    logits = teacher.get_output_embeddings()(rows[r.completion_mask].float())
    assert logits.shape == (int(r.completion_mask.sum()), TOKENIZER_SIZE)
    torch.testing.assert_close(logits.log_softmax(-1).exp().sum(-1), torch.ones(len(logits)))
    assert set(teacher.traffic()) == {"teacher/requests", "teacher/bytes", "teacher/bytes_per_token",
                                      "teacher/bytes_per_position", "teacher/wait_s"}


def test_every_served_teacher_is_registered():
    assert list_teachers() == ["VLLMHidden", "VLLMTopK"]


# --- start-up checks --------------------------------------------------------------------------------
def test_start_up_refuses_another_model_name_tokenizer_or_a_smaller_vocabulary(models, fake):
    tok = models["tokenizer"]
    with pytest.raises(ValueError, match=r"model.teacher.model='other' is not served at http://127.0.0.1:\d+; it serves 'teacher'"):
        VLLMTopK(url=fake.url, model="other").connect(tok, TOKENIZER_SIZE)
    fake.tokenizer = lambda text, add_special_tokens: {"input_ids": [3] * len(text)}
    with pytest.raises(ValueError, match="tokenizes differently from the student"):
        VLLMTopK(url=fake.url, model="teacher").connect(tok, TOKENIZER_SIZE)
    fake.tokenizer = tok
    with pytest.raises(ValueError, match=f"does not take the student's vocabulary of {TOKENIZER_SIZE + 1} tokens"):
        VLLMTopK(url=fake.url, model="teacher").connect(tok, TOKENIZER_SIZE + 1)


def test_start_up_refuses_another_chat_template_unless_allowed(tiny, fake):
    """The student's tokenizer has a chat template; the served model (``fake``'s tokenizer) has none."""
    student = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    said = (rf"the teacher served at {fake.url} formats conversations differently from the student \(a probe "
            r"conversation: None vs \d+ tokens\)")
    with pytest.raises(ValueError, match=said + "; the teacher would score the student's turns in a format it does "
                                              "not use: serve it with the student's template"):
        VLLMTopK(url=fake.url, model="teacher", k=K).connect(student, TOKENIZER_SIZE)
    with pytest.warns(UserWarning, match=said + r" \(allowed by model.allow_template_mismatch\)"):
        VLLMTopK(url=fake.url, model="teacher", k=K).connect(student, TOKENIZER_SIZE, allow_template_mismatch=True)
    fake.tokenizer = student  # the same template on both sides
    VLLMTopK(url=fake.url, model="teacher", k=K).connect(student, TOKENIZER_SIZE)


def test_start_up_refuses_rollouts_longer_than_the_servers_context(tiny, prompts_file, tmp_path, capsys):
    fake = FakeVLLM(AutoModelForCausalLM.from_pretrained(tiny["teacher"]), AutoTokenizer.from_pretrained(tiny["teacher"]))
    fake.max_model_len = 64
    try:
        code = run(served_config(tmp_path, tiny, prompts_file, fake.url, steps=1))
    finally:
        fake.close()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last == (f"tiplight: error: the teacher served at {fake.url} takes at most 64 tokens a "
                                  "sequence but rollouts reach 71 (data.max_prompt_tokens + model.sampling."
                                  "max_new_tokens + 1); start it with --max-model-len 71 or more, or shorten "
                                  "the rollouts."), last
    assert fake.step_requests == 1  # the start-up probe only


def test_bad_settings_are_one_sentence():
    with pytest.raises(ValueError, match="model.teacher.url='teacher:8000' is not allowed; give http://host:port."):
        VLLMTopK(url="teacher:8000", model="t")
    with pytest.raises(ValueError, match="model.teacher.k=0 is not allowed"):
        VLLMTopK(url="http://x", model="t", k=0)


# --- failures during a step ------------------------------------------------------------------------
def test_server_errors_are_retried_a_bounded_number_of_times(models, fake):
    teacher = served(VLLMTopK, fake.url, models["tokenizer"], k=K, retries=2)
    fake.step_requests = 0
    fake.script.extend(["503", "503"])
    rows = teacher.submit(rollout().rows(slice(0, 1))).result()
    assert fake.step_requests == 3 and rows.shape == (1, 6, 1 + 2 * (K + 1))
    traffic = teacher.traffic()
    assert traffic["teacher/requests"] == 1 and traffic["teacher/wait_s"] > 0  # answered requests only
    fake.step_requests = 0
    fake.script.extend(["503"] * 3)
    with pytest.raises(TeacherServerError, match=rf"^the served teacher at {fake.url}/v1/completions failed 3 times "
                                                 r"\(HTTP 503: .*\); the step was not taken"):
        teacher.submit(rollout().rows(slice(0, 1))).result()
    assert fake.step_requests == 3


@pytest.mark.parametrize(("behaviour", "said"), [
    ("garbage", "sent a malformed payload: the answer is not JSON"),
    ("short", "sent a malformed payload: expected 1 choices"),
    ("nan", "sent a malformed payload: a prompt_logprobs entry lacks the sampled token"),
])
def test_a_malformed_payload_is_one_sentence_and_not_retried(models, fake, behaviour, said):
    teacher = served(VLLMTopK, fake.url, models["tokenizer"], k=K)
    fake.step_requests = 0
    fake.script.append(behaviour)
    with pytest.raises(TeacherServerError, match=f"^the served teacher at {fake.url}/v1/completions {said}"):
        teacher.submit(rollout().rows(slice(0, 1))).result()
    assert fake.step_requests == 1


def test_a_slow_or_down_server_is_one_sentence(models, fake):
    teacher = served(VLLMTopK, fake.url, models["tokenizer"], k=K, retries=0, timeout_s=0.2)
    fake.script.append("slow")
    with pytest.raises(TeacherServerError, match=r"failed 1 times \(no answer within 0.2 s\)"):
        teacher.submit(rollout().rows(slice(0, 1))).result()
    fake.close()
    with pytest.raises(TeacherServerError, match=rf"^the served teacher at {fake.url}/v1/completions failed 1 times "
                                                 r"\(ConnectionRefusedError"):
        teacher.submit(rollout().rows(slice(0, 1))).result()


# --- through the command ---------------------------------------------------------------------------
def served_config(tmp_path: Path, tiny, prompts_file, url: str, steps: int) -> Path:
    config = yaml.safe_load(write_config(tmp_path / "run.yaml", tiny, prompts_file).read_text())
    config["model"]["teacher"] = {"class_path": "tiplight.teachers.VLLMTopK",
                                  "init_args": {"url": url, "model": "teacher", "k": K, "retries": 1, "backoff_s": 0.01,
                                                "rows_per_request": 2}}
    config["model"]["objective"] = {"class_path": "TopKDivergence", "init_args": {"k": K}}
    config["data"]["init_args"]["max_prompt_tokens"] = 64  # within the server's --max-model-len
    config["trainer"].update(max_steps=steps, limit_val_batches=0, logger=False)
    config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                           "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 1}})
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(config: Path, *args: str) -> int:
    try:
        main(["fit", "--config", str(config), *args])
    except SystemExit as done:
        return done.code
    return 0


def test_a_served_teacher_that_dies_mid_run_leaves_a_checkpoint_the_run_resumes_from(tiny, prompts_file, tmp_path,
                                                                                    capsys):
    tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    fake = FakeVLLM(AutoModelForCausalLM.from_pretrained(tiny["teacher"]), tok)
    fake.script.extend([""] * 3 + ["503"] * 10)  # the start-up probe, then 2 requests a step: step 2 fails
    config = served_config(tmp_path, tiny, prompts_file, fake.url, steps=3)
    code = run(config)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    fake.close()
    ckpt = next((tmp_path / "runs").rglob("interrupted.ckpt"))
    assert code == 2 and err.startswith(f"tiplight: error: the served teacher at {fake.url}/v1/completions failed 2 "
                                        "times (HTTP 503"), err
    assert err.endswith(f"resume with --ckpt_path {ckpt}."), err
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 1
    back = FakeVLLM(AutoModelForCausalLM.from_pretrained(tiny["teacher"]), tok)
    try:
        code = run(config, "--ckpt_path", str(ckpt), "--model.teacher.init_args.url", back.url)
    finally:
        back.close()
    assert code == 0, capsys.readouterr().err[-3000:]
    assert back.step_requests == 1 + 2 * 2  # the probe, then steps 2 and 3 (4 rollouts, 2 rows a request)
    assert torch.load(tmp_path / "ckpt" / "epoch=0-step=3.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3
