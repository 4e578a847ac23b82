"""The command as users run it, for the defects an outside review found: LoRA and k-bit configs, one
seed flag, progress on a pipe, SIGTERM, resumed summaries, overwrites, bad checkpoints and parse errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import write_config

from tiplight.cli import TiplightCLI, main

COMMAND = [sys.executable, "-m", "tiplight.cli"]


class Unsafe:
    """A pickled object that weights-only loading refuses."""


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.mark.slow
def test_command_fits_lora_with_an_8bit_teacher_and_model_seed_alone(tiny, prompts_file, tmp_path):
    """Once: 'dict' object has no attribute 'r' (LoRA), no attribute 'to_config' (k-bit), and a Lightning
    traceback for --model.seed alone (hparams merge). Progress is one plain line per step on a pipe."""
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    done = subprocess.run([*COMMAND, "fit", "--config", str(config), "--model.lora.r", "4",
                           "--model.teacher_quantization.bits", "8", "--model.seed", "3",
                           "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "true"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 1/1" in done.stdout and "kept" in done.stdout and "loss" in done.stdout
    both = done.stdout + done.stderr
    assert "Tip:" not in both and "LeafSpec" not in both and "args parameter is intended" not in both


def test_seed_everything_seeds_model_and_data(tiny, prompts_file, tmp_path):
    config = str(write_config(tmp_path / "run.yaml", tiny, prompts_file))
    cli = TiplightCLI(args=["--config", config, "--seed_everything", "3"], run=False)
    assert cli.model.seed == 3 and cli.datamodule.seed == 3
    cli = TiplightCLI(args=["--config", config, "--seed_everything", "3", "--model.seed", "5"], run=False)
    assert cli.model.seed == 5 and cli.datamodule.seed == 3


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_nonzero(tiny, prompts_file, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    proc = subprocess.Popen([*COMMAND, "fit", "--config", str(config), "--trainer.max_steps", "100000",
                             "--trainer.val_check_interval", "100000", "--trainer.enable_progress_bar", "true"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # LineProgress prints every 10 steps: training is under way
        if line.startswith("step ") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "resume with --ckpt_path" in err
    ckpt = next((tmp_path / "runs").rglob("interrupted.ckpt"))
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert step >= 10
    cli = TiplightCLI(args=["fit", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.max_steps",
                            str(step + 1), "--trainer.default_root_dir", str(tmp_path / "resumed"),
                            "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == step + 1 and cli.model.next_batch == step + 1


def eval_config(tmp_path, tiny, prompts_file, root: Path) -> str:
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": str(i), "problem": f"{i}+1?", "answer": str(i + 1)}) + "\n"
                             for i in range(3)))
    config = yaml.safe_load(write_config(tmp_path / "run.yaml", tiny, prompts_file).read_text())
    config["trainer"].update(logger=False, default_root_dir=str(root), enable_progress_bar=False, max_steps=1)
    config["trainer"]["callbacks"] = [
        {"class_path": "tiplight.evals.MathEvalCallback",
         "init_args": {"benchmarks": [str(bench)], "num_samples": 1, "temperature": 0.0, "max_new_tokens": 4,
                       "at_fit_start": True, "at_validation": False, "grade_workers": 1, "instruction": None}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 1}},
        {"class_path": "tiplight.callbacks.RunSummary", "init_args": {"export": False}}]
    path = tmp_path / f"eval_{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_resumed_run_keeps_its_first_accuracy_and_finished_runs_are_not_overwritten(tiny, prompts_file, tmp_path):
    first = eval_config(tmp_path, tiny, prompts_file, tmp_path / "a")
    TiplightCLI(args=["fit", "--config", first])
    before = json.loads((tmp_path / "a" / "summary.json").read_text())["accuracy_before"]
    ckpt = next((tmp_path / "a" / "ckpt").glob("*.ckpt"))
    with pytest.raises(ValueError, match="already holds a finished run"):
        TiplightCLI(args=["fit", "--config", first])  # the same folder again
    resumed = eval_config(tmp_path, tiny, prompts_file, tmp_path / "b")
    cli = TiplightCLI(args=["fit", "--config", resumed, "--ckpt_path", str(ckpt), "--trainer.max_steps", "2"])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["accuracy_before"] == before and summary["accuracy_curve"]["0"] == before
    assert not list((tmp_path / "b" / "evals").glob("fit_start_*"))  # not measured again at step 1
    assert cli.trainer.global_step == 2


@pytest.mark.parametrize("content,message", [(b"", "is empty"), (b"not a zip", "is not a PyTorch checkpoint"),
                                             (None, "holds objects that safe loading refuses")])
def test_bad_checkpoint_is_one_sentence(tiny, prompts_file, tmp_path, capsys, content, message):
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    ckpt = tmp_path / "bad.ckpt"
    if content is None:
        torch.save({"hyper_parameters": {"x": Unsafe()}, "state_dict": {}}, ckpt)
    else:
        ckpt.write_bytes(content)
    code, _, err = run_main(["fit", "--config", str(config), "--ckpt_path", str(ckpt)], capsys)
    assert code == 2 and message in err and "weights_only=False" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_lightnings_checkpoint_names_are_not_files():
    from tiplight.cli import check_checkpoint

    for name in ("last", "best", "hpc", "registry:my-model"):
        check_checkpoint(name)  # no error: Lightning resolves these names itself
    with pytest.raises(ValueError, match="does not exist"):
        check_checkpoint("no/such.ckpt")


@pytest.mark.parametrize("args,message", [
    (["--model.selector", "Foo"], "registered selectors: AllTokens"),
    (["--model.selector.init_args.retian", "0.5"], "Option 'retian' is not accepted; SoftOrTopK accepts: retain"),
])
def test_parse_errors_are_one_sentence_with_the_choices(tiny, prompts_file, tmp_path, capsys, args, message):
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    code, out, err = run_main(["fit", "--config", str(config), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out


def test_help_lists_tiplights_own_commands(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and all(f"tiplight {c}" in out for c in ("toy", "study", "analyze")) and "fit" in out




@pytest.mark.parametrize("option,value,allowed", [
    ("model.stats_scope", "global", "batch, micro"), ("model.optimization.lr_schedule", "linear", "cosine, constant"),
    ("data.init_args.overlong", "cut", "truncate, skip"), ("model.selector.init_args.budget", "step", "rollout, batch"),
])
def test_choices_are_types_listed_in_one_sentence(tiny, prompts_file, tmp_path, capsys, option, value, allowed):
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    code, _, err = run_main(["fit", "--config", str(config), f"--{option}", value], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"='{value}' is not allowed; use one of {allowed}." in err


@pytest.mark.parametrize("args,config,message", [
    (["--model.divergence", "jsd"], {}, "model.divergence is gone: model.objective replaced"),
    ([], {"jsd_beta": 0.3}, "model.jsd_beta is gone: model.objective replaced"),
    (["--model.denominator=valid"], {}, "model.denominator is gone: it moved into the objective"),
    ([], {"denominator": "valid"}, "model.denominator is gone: it moved into the objective"),
    (["--model.micro_batch_size", "4"], {}, "model.micro_batch_size has moved to model.memory.micro_batch_size: "
                                            "write --model.memory.micro_batch_size on the command line"),
    ([], {"chunk_size": 8}, "model.chunk_size has moved to model.memory.chunk_size: write"),
    (["--model.grad_clip=0.5"], {}, "model.grad_clip has moved to model.optimization.grad_clip: write"),
    ([], {"planted_errors": "a.b"}, "model.planted_errors has moved to model.logging.planted_errors: write"),
    (["--model.objective", "Foo"], {}, "registered objectives: ForwardKL, JSD, ReverseKL, SampledTokenPG"),
    (["--model.objective", "SampledTokenPG", "--model.objective.estimator", "k2"], {}, "use one of k1, k3."),
])
def test_removed_moved_and_bad_objective_options_are_one_sentence(tiny, prompts_file, tmp_path, capsys, args, config,
                                                            message):
    """``--model.divergence`` once parsed as an abbreviation of ``--model.divergence_threshold``."""
    path = write_config(tmp_path / "run.yaml", tiny, prompts_file, **config)
    code, _, err = run_main(["fit", "--config", str(path), *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_run_summary_exports_the_adapter_when_merge_lora_is_false(tiny, prompts_file, tmp_path):
    config = yaml.safe_load(write_config(tmp_path / "run.yaml", tiny, prompts_file).read_text())
    config["trainer"].update(logger=False, max_steps=1, enable_progress_bar=False, default_root_dir=str(tmp_path / "r"))
    config["trainer"]["callbacks"] = [{"class_path": "tiplight.callbacks.RunSummary", "init_args": {"merge_lora": False}}]
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(config))
    TiplightCLI(args=["fit", "--config", str(tmp_path / "lora.yaml"), "--model.lora.r", "4"])
    student = tmp_path / "r" / "student"
    assert (student / "adapter_config.json").is_file() and not (student / "model.safetensors").exists()
