"""MathEvalCallback against a fake student, in fit and in validate; benchmark loading."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tiplight.evals import BENCHMARKS, MathEvalCallback, load_benchmark, register_benchmark

PROBLEMS = [
    {"id": "p1", "problem": "one", "answer": "1", "subject": "Algebra", "level": 1},
    {"id": "p2", "problem": "two", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 2},
    {"id": "p3", "problem": "three", "answer": "3", "subject": "Geometry", "level": 2},
]
ANSWERS = {  # 4 samples per problem: p1 all right, p2 right twice in two spellings, p3 never
    "one": ["\\boxed{1}"] * 4,
    "two": ["\\boxed{0.5}", "The answer is \\frac12.", "\\boxed{7}", "I have no idea at all."],
    "three": ["\\boxed{4}"] * 4,
}


class FakeStudent(pl.LightningModule):
    """The two members the callback uses, plus the minimum to train."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.calls: list[dict] = []

    def format_prompt(self, problem: str, instruction: str | None) -> str:
        return f"{problem}\n{instruction}"

    def generate_completions(self, prompts, *, num_samples, temperature, top_p, top_k, max_new_tokens, seed):
        self.calls.append({"n": len(prompts), "num_samples": num_samples, "temperature": temperature,
                           "training": self.training})  # fmt: skip
        return [ANSWERS[p.split("\n")[0]][:num_samples] for p in prompts]

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return str(path)


def _loader():
    return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)


def _trainer(tmp_path, callback):
    return pl.Trainer(default_root_dir=tmp_path, max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                      num_sanity_val_steps=0, accelerator="cpu", devices=1)  # fmt: skip


def test_callback_in_fit_scores_before_during_and_after(tmp_path, bench):
    cb = MathEvalCallback(benchmarks=[bench], num_samples=4, at_fit_start=True, every_n_steps=1,
                          at_validation=False, batch_size=2)  # fmt: skip
    student = FakeStudent()
    _trainer(tmp_path, cb).fit(student, _loader())
    assert set(cb.results) == {"fit_start", "step_1", "step_2", "fit_end"}
    m = cb.results["fit_end"]["tiny"]
    assert m["mean@4"] == pytest.approx((4 + 2 + 0) / 12) == m["accuracy"]
    assert m["pass@1"] == pytest.approx(m["mean@4"])
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx(2 / 3)  # p2: 0.5 and \frac12 outvote 7
    assert m["subject_Algebra/mean@4"] == pytest.approx(6 / 8)
    assert all(not c["training"] for c in student.calls)  # generation ran in eval mode
    assert {c["n"] for c in student.calls} == {2, 1}  # batch_size 2 over 3 problems
    lines = (tmp_path / "evals" / "fit_end_tiny.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    assert record["id"] == "p2" and record["verdicts"] == [True, True, False, False]
    assert record["extracted"][:2] == ["0.5", "\\frac12"]


def test_callback_in_validate_logs_metrics(tmp_path, bench):
    cb = MathEvalCallback(benchmarks=[bench], num_samples=2, temperature=0.0, at_fit_end=False, limit=3)
    student = FakeStudent()
    out = _trainer(tmp_path, cb).validate(student, _loader(), verbose=False)
    assert cb.results["validation"]["tiny"]["num_problems"] == 3
    assert out[0]["eval/tiny/mean@2"] == pytest.approx((2 + 2 + 0) / 6)
    assert student.calls[0]["temperature"] == 0.0 and not student.calls[0]["training"]


def test_callback_rejects_bad_config_at_start():
    with pytest.raises(ValueError, match="is neither a registered source"):
        MathEvalCallback(benchmarks=["math5000"])
    with pytest.raises(ValueError, match="num_samples"):
        MathEvalCallback(benchmarks=["aime24"], num_samples=0)


def test_shipped_benchmarks_load():
    sizes = {name: len(load_benchmark(name)) for name in ("math500", "aime24", "aime25")}
    assert sizes == {"math500": 500, "aime24": 30, "aime25": 30}
    math500 = load_benchmark("math500")
    assert all({"id", "problem", "answer", "subject", "level"} <= set(p) for p in math500)
    assert len({p["id"] for p in math500}) == 500
    assert all(p["answer"].isdigit() for p in load_benchmark("aime25"))


def test_register_benchmark(bench):
    register_benchmark("tiny_test_only", lambda: PROBLEMS)
    try:
        assert load_benchmark("tiny_test_only") == PROBLEMS
        with pytest.raises(ValueError, match="already registered"):
            register_benchmark("tiny_test_only", list)
    finally:
        del BENCHMARKS["tiny_test_only"]
    assert [p["id"] for p in load_benchmark(bench)] == ["p1", "p2", "p3"]


def test_callback_is_configurable_from_yaml(bench):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MathEvalCallback, "eval")
    yaml = f"eval:\n  benchmarks: [{bench}]\n  num_samples: 16\n  temperature: 1.0\n  every_n_steps: 50\n  limit: 2\n"
    cfg = parser.instantiate_classes(parser.parse_string(yaml))
    cb = cfg.eval
    assert (cb.num_samples, cb.every_n_steps, cb.limit, cb.benchmarks) == (16, 50, 2, [bench])
    assert "\\boxed{}" in cb.instruction


def test_generation_is_sharded_and_records_gathered(bench, monkeypatch):
    """Two ranks simulated in-process: each generates its shard; all_gather_object is replaced by one
    that returns both shards, as gloo/nccl would."""
    from types import SimpleNamespace

    from tiplight.evals.metrics import compute_metrics

    cb = MathEvalCallback(benchmarks=[bench], num_samples=4, batch_size=1)
    shards = [
        cb._run_shard(SimpleNamespace(global_rank=r, world_size=2, is_global_zero=r == 0), FakeStudent(), bench, "x") for r in range(2)
    ]
    assert [[r["id"] for r in s] for s in shards] == [["p1", "p3"], ["p2"]]

    def all_gather_object(out, obj):
        out[:] = [shards[1], shards[0]]  # arrival order must not matter

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    records = cb._gather(shards[0])
    assert [r["id"] for r in records] == ["p1", "p2", "p3"]
    assert compute_metrics(records, 4)["mean@4"] == pytest.approx(6 / 12)
