"""End-to-end through the command line: `tiplight fit` and `tiplight validate` on tiny models."""

import json
import subprocess
import sys

import pytest
import yaml

from tiplight.cli import TiplightCLI


def write_config(path, tiny, prompts_file, **model):
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 1,
                    "val_check_interval": 2, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "default_root_dir": str(path.parent / "runs"), "log_every_n_steps": 1,
                    "callbacks": [{"class_path": "tiplight.callbacks.RunSummary"}]},
        "model": {"student": tiny["student"], "teacher": tiny["teacher"],
                  "selector": {"class_path": "SoftOrTopK", "init_args": {"retain": 0.5}},
                  "sampling": {"max_new_tokens": 6}, "optimization": {"lr_schedule": "cosine"}, **model},
        "data": {"class_path": "tiplight.data.PromptDataModule",
                 "init_args": {"train_files": [prompts_file], "prompts_per_step": 2, "rollouts_per_prompt": 2,
                               "val_size": 2}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_from_yaml_logs_checkpoints_and_summarises(tiny, prompts_file, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    cli = TiplightCLI(args=["fit", "--config", str(config)])
    trainer = cli.trainer
    assert trainer.global_step == 2
    log_dir = trainer.log_dir
    assert "val/opd_loss" in trainer.callback_metrics
    assert (tmp_path / "runs").exists()
    summary = json.loads((__import__("pathlib").Path(log_dir) / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["student_dir"]
    assert (__import__("pathlib").Path(summary["student_dir"]) / "config.json").exists()
    ckpts = list((__import__("pathlib").Path(log_dir) / "checkpoints").glob("*.ckpt"))
    assert ckpts and (__import__("pathlib").Path(log_dir) / "config.yaml").exists()


def test_validate_evaluates_a_student_alone(tiny, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": str(i), "problem": f"{i}+1?", "answer": str(i + 1)}) + "\n"
                             for i in range(4)))
    args = ["validate", "--model.student", tiny["student"], "--data", "tiplight.data.PromptDataModule",
            "--data.train_files", f"[{bench}]", "--data.prompt_field", "problem", "--data.val_size", "2",
            "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "tiplight.evals.MathEvalCallback",
            "--trainer.callbacks.benchmarks", f"[{bench}]", "--trainer.callbacks.num_samples", "2",
            "--trainer.callbacks.max_new_tokens", "4", "--trainer.callbacks.grade_workers", "1"]
    cli = TiplightCLI(args=args)
    evals = cli.trainer.callbacks[0]
    assert evals.results["validation"]["bench"]["num_problems"] == 4
    assert 0.0 <= evals.results["validation"]["bench"]["mean@2"] <= 1.0


def test_console_script_prints_config_and_rejects_bad_values(tiny, prompts_file, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    ok = subprocess.run([sys.executable, "-m", "tiplight.cli", "fit", "--config", str(config), "--print_config"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    printed = yaml.safe_load(ok.stdout)
    assert printed["model"]["selector"]["class_path"] == "tiplight.selection.SoftOrTopK"
    bad = subprocess.run([sys.executable, "-m", "tiplight.cli", "fit", "--config", str(config),
                          "--model.stats_scope", "everything"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip() == ("tiplight: error: model.stats_scope='everything' is not allowed; "
                                  "use one of batch, micro.")


@pytest.mark.parametrize("retain", ["0", "1.5"])
def test_bad_selector_budget_is_one_sentence(tiny, prompts_file, tmp_path, retain, capsys):
    from tiplight.cli import main

    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--model.selector.init_args.retain", retain])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"retain={float(retain)} is invalid; it must be a fraction in (0, 1]" in err


def test_plugin_short_name_after_tiplight_plugins_import(tiny, prompts_file, tmp_path, monkeypatch):
    from tiplight.cli import main

    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    monkeypatch.setenv("TIPLIGHT_PLUGINS", "plugin_example")
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--model.selector", "LinearMixTopK", "--print_config"])
    assert done.value.code == 0
