"""Runs of the command that must keep what was trained: FSDP2 with tied embeddings, resumes that honour
or refuse what the user typed, signals in any phase, and non-finite losses or weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import write_config

COMMAND = [sys.executable, "-m", "tiplight.cli"]
CONFIGS = Path(__file__).parent.parent / "configs"


def fit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, "fit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fsdp2_fits_exports_and_resumes_a_tied_student(tied, prompts_file, tmp_path):
    """Once: 'FSDP requires a single root module' at the first rollout of a tied student under
    configs/strategy/fsdp2.yaml (then: the export of the DTensor weights failed)."""
    config = str(write_config(tmp_path / "run.yaml", tied, prompts_file))
    done = fit("--config", config, "--config", str(CONFIGS / "strategy" / "fsdp2.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    log_dir = next((tmp_path / "runs").rglob("summary.json")).parent
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(log_dir / "student")
    assert student.lm_head.weight is student.model.embed_tokens.weight
    trained = student.model.embed_tokens.weight
    before = AutoModelForCausalLM.from_pretrained(tied["student"]).model.embed_tokens.weight
    assert torch.isfinite(trained).all() and not torch.equal(trained, before)
    ckpt = next((log_dir / "checkpoints").glob("*.ckpt"))  # a distributed checkpoint (a directory)
    resumed = fit("--config", config, "--config", str(CONFIGS / "strategy" / "fsdp2.yaml"), "--ckpt_path",
                  str(ckpt), "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stdout + resumed.stderr


@pytest.fixture(scope="module")
def trained(tiny, prompts_file, tmp_path_factory) -> dict[str, Path]:
    """A 2-step run from a student directory of its own (so a test can move it), with its checkpoint."""
    import shutil

    root = tmp_path_factory.mktemp("trained")
    student = Path(shutil.copytree(tiny["student"], root / "student"))
    config = write_config(root / "run.yaml", {**tiny, "student": str(student)}, prompts_file)
    done = fit("--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = next((root / "runs").rglob("*.ckpt"))
    return {"root": root, "config": config, "student": student, "ckpt": ckpt}


@pytest.mark.slow
def test_resume_honours_a_moved_student_and_the_options_given(trained, tmp_path):
    """Once: the checkpoint's student path, sampling and divergence (now objective) replaced the ones given (a moved
    student could not be resumed at all, and config.yaml showed the checkpoint's values)."""
    import yaml

    moved = trained["student"].rename(tmp_path / "moved")
    try:
        done = fit("--config", str(trained["config"]), "--ckpt_path", str(trained["ckpt"]), "--model.student",
                   str(moved), "--model.sampling.max_new_tokens", "4", "--model.objective", "ForwardKL",
                   "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path / "resumed"))
    finally:
        moved.rename(trained["student"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model.sampling.max_new_tokens=4 (the checkpoint had 6)" in done.stderr
    saved = yaml.safe_load(next((tmp_path / "resumed").rglob("config.yaml")).read_text())["model"]
    assert (saved["student"], saved["sampling"]["max_new_tokens"]) == (str(moved), 4)
    assert saved["objective"]["class_path"].endswith("ForwardKL")


@pytest.mark.slow
def test_resume_refuses_another_student_structure_in_one_sentence(trained, tmp_path):
    """Once: the checkpoint's lora=None silently replaced the LoRA adapter asked for."""
    done = fit("--config", str(trained["config"]), "--ckpt_path", str(trained["ckpt"]), "--model.lora.r", "4",
               "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path / "resumed"))
    assert done.returncode == 2
    assert "model.lora=" in done.stderr and "(the checkpoint holds None)" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def signalled_config(tmp_path: Path, tiny: dict, prompts_file: str, hook: str | None) -> Path:
    """write_config's run with an evaluation at fit start and end, and a SIGTERM just before the one
    in ``hook`` (None: no signal)."""
    import json

    import yaml

    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": str(i), "problem": f"{i}+1?", "answer": str(i + 1)}) + "\n"
                             for i in range(3)))
    config = yaml.safe_load(write_config(tmp_path / "run.yaml", tiny, prompts_file).read_text())
    config["trainer"]["callbacks"] = [
        *([{"class_path": "signals.SigtermAt", "init_args": {"hook": hook}}] if hook else []),
        {"class_path": "tiplight.evals.MathEvalCallback",
         "init_args": {"benchmarks": [str(bench)], "num_samples": 1, "temperature": 0.0, "max_new_tokens": 4,
                       "at_fit_start": True, "at_validation": False, "grade_workers": 1, "instruction": None}},
        {"class_path": "tiplight.callbacks.RunSummary"}]
    path = tmp_path / f"signalled_{hook}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit_with_tests_on_path(*args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                     str(Path(__file__).parent)]))}
    return subprocess.run([*COMMAND, "fit", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_sigterm_in_the_final_evaluation_keeps_a_checkpoint_that_finishes_the_run(tiny, prompts_file, tmp_path):
    """Once: rc -15 (the default handler: Lightning restores it before on_fit_end), no message, no
    checkpoint: the whole run lost."""
    import json

    config = signalled_config(tmp_path, tiny, prompts_file, "on_fit_end")
    done = fit_with_tests_on_path("--config", str(config))
    assert done.returncode == 143, done.stderr[-3000:]
    assert "math eval (fit_start) bench: 3/3 problems" in done.stdout  # progress of the fit-start evaluation
    assert "interrupted by SIGTERM after training at step 2" in done.stderr and "resume with --ckpt_path" in done.stderr
    ckpt = next((tmp_path / "runs").rglob("interrupted.ckpt"))
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 2
    assert not list((tmp_path / "runs").rglob("summary.json"))
    finished = fit("--config", str(signalled_config(tmp_path, tiny, prompts_file, None)), "--ckpt_path", str(ckpt),
                   "--trainer.default_root_dir", str(tmp_path / "finished"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads(next((tmp_path / "finished").rglob("summary.json")).read_text())
    assert summary["steps"] == 2 and summary["student_dir"]
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert all(summary[f"time/{phase}"] > 0 for phase in ("rollout", "score", "select", "update"))


@pytest.mark.slow
def test_sigterm_before_training_says_nothing_was_trained(tiny, prompts_file, tmp_path):
    """Once: rc -15 and no message (Lightning's handler is not yet installed at fit start)."""
    done = fit_with_tests_on_path("--config", str(signalled_config(tmp_path, tiny, prompts_file, "on_fit_start")))
    assert done.returncode == 143, done.stderr[-3000:]
    assert "interrupted by SIGTERM before training at step 0: nothing was trained" in done.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_a_checkpoint_corrupted_mid_file_is_refused_in_one_sentence(trained, tmp_path):
    """Once: rc 0, NaN loss from the first step and an exported student with every tensor non-finite."""
    bad = tmp_path / "bad.ckpt"
    data = bytearray(trained["ckpt"].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # NaN floats inside a tensor record
    bad.write_bytes(bytes(data))
    done = fit("--config", str(trained["config"]), "--ckpt_path", str(bad), "--trainer.max_steps", "3",
               "--trainer.default_root_dir", str(tmp_path / "resumed"))
    assert done.returncode == 2 and "fails its CRC-32 check" in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and not (tmp_path / "resumed").exists()


@pytest.mark.slow
def test_a_checkpoint_with_non_finite_weights_is_refused(trained, tmp_path):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name][0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    done = fit("--config", str(trained["config"]), "--ckpt_path", str(tmp_path / "nan.ckpt"), "--trainer.max_steps",
               "3", "--trainer.default_root_dir", str(tmp_path / "resumed"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"the checkpoint's weight {name} holds NaN or inf" in done.stderr
    assert not list((tmp_path / "resumed").rglob("student"))


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_nothing_is_exported(tiny, prompts_file, tmp_path):
    """Once: a diverged run (weights ~1e30 after two steps, NaN loss at the third) ended with rc 0 and
    exported its student."""
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    done = fit("--config", str(config), "--trainer.max_steps", "3", "--model.optimizer", "torch.optim.AdamW",
               "--model.optimizer.lr", "1e30")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "the training loss is nan at step 3" in done.stderr and "not exported" in done.stderr
    assert not list((tmp_path / "runs").rglob("student")) and not list((tmp_path / "runs").rglob("summary.json"))


@pytest.mark.slow
def test_validate_evaluates_accuracy_with_a_config_that_evaluates_only_at_fit_end(tiny, prompts_file, tmp_path):
    """Once: only val/opd_loss, since every shipped config sets at_validation: false (for fit)."""
    config = signalled_config(tmp_path, tiny, prompts_file, None)
    done = subprocess.run([*COMMAND, "validate", "--config", str(config), "--model.student", tiny["student"]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval/bench/accuracy" in done.stdout and "val/opd_loss" in done.stdout
    assert "math eval (validation) bench: 3/3 problems" in done.stdout


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    from tiplight.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.mark.parametrize("command", ["test", "predict"])
def test_test_and_predict_are_not_offered(command, capsys):
    """Once: listed by --help, then failing (a DistillModule has no test or predict step)."""
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "{fit,validate}" in out
    code, _, err = run_main([command, "--config", str(CONFIGS / "toy.yaml")], capsys)
    assert code == 2 and f"invalid choice: '{command}' (choose from 'fit', 'validate')" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without a GPU")
def test_a_gpu_config_on_a_cpu_machine_says_accelerator_cpu(capsys):
    """Once: 'No supported gpu backend found!'."""
    code, _, err = run_main(["fit", "--config", str(CONFIGS / "qwen3_8b_to_4b.yaml")], capsys)
    assert code == 2 and "trainer.accelerator='gpu' needs a GPU" in err and "--trainer.accelerator cpu" in err
    assert len(err.strip().splitlines()) == 1


def test_resume_differences_compare_groups_field_by_field():
    from tiplight.resume import differences

    saved = {"student": "/old", "lora": None, "sampling": {"top_k": 0, "max_new_tokens": 6}, "seed": None}
    given = {"student": "/new", "lora": {"r": 4}, "sampling": {"top_k": 0, "max_new_tokens": 4}, "seed": None,
             "selector": {"class_path": "AllTokens"}}  # not in checkpoints: not compared
    assert differences(given, saved) == {"student": ("/new", "/old"), "lora": ({"r": 4}, None),
                                         "sampling.max_new_tokens": (4, 6)}
    assert differences(saved, saved) == {}
