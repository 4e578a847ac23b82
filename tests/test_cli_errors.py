"""One sentence, not a traceback, for what an outside review fed the command: unwritable folders, a full
disk (which must leave no half-written file under its final name), broken models, plugins, checkpoints,
optimizers, selectors and data files, and parse errors that named the wrong field."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import yaml
from test_cli import write_config
from test_cli_review import run_main


def fit(tmp_path: Path, tiny, prompts_file, *args: str, checkpoints: Path | None = None, **model) -> list[str]:
    """``tiplight fit`` arguments for one step on the tiny models (a checkpoint every step if asked)."""
    config = yaml.safe_load(write_config(tmp_path / "run.yaml", tiny, prompts_file, **model).read_text())
    config["trainer"].update(max_steps=1, default_root_dir=str(tmp_path / "runs"), logger=False)
    if checkpoints is not None:
        config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                               "init_args": {"dirpath": str(checkpoints), "every_n_train_steps": 1}})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return ["fit", "--config", str(tmp_path / "run.yaml"), *args]


def one_sentence(code: int, err: str) -> str:
    """The error line (model loading may print its progress bars before it)."""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and "Traceback" not in err and last.startswith("tiplight: error: "), err[-3000:]
    assert err.count("tiplight: error") == 1 and last.endswith("."), err[-3000:]
    return last


@pytest.mark.parametrize("args,message", [
    (["--data.overlong", "x"], "data.init_args.overlong='x' is not allowed; use one of truncate, skip."),
    (["--model.selector.init_args.budget", "3"], "model.selector.init_args.budget='3' is not allowed; use one of"),
    (["--model.selector.init_args.retain", "abc"], "model.selector.init_args.retain='abc' is not allowed; use a number."),
    (["--model.sampling.max_new_tokens", "abc"], "model.sampling.max_new_tokens='abc' is not allowed; use an integer."),
    (["--seed_everything", "abc"], "seed_everything='abc' is not allowed; use true or false or an integer."),
    (["--seed_everything", "-5"], "seed_everything=-5 is not allowed; use an integer from 0 to 4294967295"),
])
def test_parse_errors_name_their_field(tiny, prompts_file, tmp_path, capsys, args, message):
    """Once: `data='x'`, `model.selector='3'`, a garbled `Parser key "retain":;` with the selector list,
    and a seed message without its field."""
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file, *args), capsys)[::2])
    assert message in err and "registered selectors" not in err and 'Parser key' not in err


def test_an_optimizer_value_it_refuses_names_the_option(tiny, prompts_file, tmp_path, capsys):
    args = fit(tmp_path, tiny, prompts_file, "--model.optimizer", "torch.optim.AdamW",
               "--model.optimizer.init_args.lr", "-1")
    err = one_sentence(*run_main(args, capsys)[::2])
    assert "model.optimizer.init_args.lr is not allowed: Invalid learning rate: -1.0 (from torch.optim.adamw.AdamW)" in err


def test_an_unwritable_output_folder(tiny, prompts_file, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    args = fit(tmp_path, tiny, prompts_file, "--trainer.default_root_dir", str(tmp_path / "a_file" / "runs"))
    err = one_sentence(*run_main(args, capsys)[::2])
    assert f"cannot write {tmp_path / 'a_file' / 'runs'}" in err and "writable output folder" in err


def disk_full_after_half(write):
    """A writer that writes half of what it is given, then finds the disk full (as ``write(data, path)``)."""
    def half(data, path, *args, **kwargs):
        full = Path(str(path) + ".whole")
        write(data, full, *args, **kwargs)
        Path(path).write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        full.unlink()
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return half


def test_a_full_disk_leaves_no_truncated_checkpoint(tiny, prompts_file, tmp_path, capsys, monkeypatch):
    from lightning.fabric.plugins.io import torch_io

    monkeypatch.setattr(torch_io, "_atomic_save", disk_full_after_half(torch_io._atomic_save))
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file, checkpoints=tmp_path / "ck"), capsys)[::2])
    assert "no space left on the device to write" in err and "--ckpt_path" in err
    assert not list((tmp_path / "ck").iterdir())  # neither a truncated .ckpt nor its temporary file


def test_a_full_disk_leaves_no_half_exported_student(tiny, prompts_file, tmp_path, capsys, monkeypatch):
    from transformers import modeling_utils

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full_after_half(modeling_utils.safe_save_file))
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file), capsys)[::2])
    assert "no space left on the device to write" in err
    assert not list((tmp_path / "runs").rglob("*student*"))  # no student/ (nor its temporary folder)


def test_the_export_replaces_an_older_student_whole(tiny, tmp_path):
    from tiplight.files import write_dir

    out = write_dir(tmp_path / "student", lambda d: (d / "old.txt").write_text("old"))
    write_dir(out, lambda d: (d / "new.txt").write_text("new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"] and [p.name for p in out.iterdir()] == ["new.txt"]


@pytest.mark.parametrize("weights", [None, b"\x10\x00\x00\x00garbage"])
def test_a_model_folder_without_usable_weights(tiny, prompts_file, tmp_path, capsys, weights):
    student = tmp_path / "student"
    student.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (student / name).write_bytes((Path(tiny["student"]) / name).read_bytes())
    if weights is not None:
        (student / "model.safetensors").write_bytes(weights)
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file, "--model.student", str(student)), capsys)[::2])
    assert f"model.student='{student}' has a config.json but no weights that load" in err


@pytest.mark.parametrize("source,message", [
    (None, "module 'tiplight_no_such_plugin' cannot be imported (No module named 'tiplight_no_such_plugin')"),
    ("raise RuntimeError('boom')", "importing module 'tiplight_no_such_plugin' raised RuntimeError: boom."),
])
def test_a_plugin_that_is_missing_or_raises(tmp_path, capsys, monkeypatch, source, message):
    if source is not None:
        (tmp_path / "tiplight_no_such_plugin.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TIPLIGHT_PLUGINS", "tiplight_no_such_plugin")
    err = one_sentence(*run_main(["fit", "--help"], capsys)[::2])
    assert "TIPLIGHT_PLUGINS='tiplight_no_such_plugin': " + message in err


def test_a_ckpt_path_that_is_a_folder(tiny, prompts_file, tmp_path, capsys):
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file, "--ckpt_path", str(tmp_path)), capsys)[::2])
    assert f"ckpt_path='{tmp_path}' is a folder, not a checkpoint" in err


def test_resuming_with_another_optimizer_class(tiny, prompts_file, tmp_path, capsys):
    """Once: KeyError: 'momentum' from inside SGD's first step."""
    from tiplight.cli import main

    main(fit(tmp_path, tiny, prompts_file, checkpoints=tmp_path / "ck"))
    ckpt = next((tmp_path / "ck").glob("*.ckpt"))
    args = fit(tmp_path, tiny, prompts_file, "--ckpt_path", str(ckpt), "--model.optimizer", "torch.optim.SGD",
               "--model.optimizer.lr", "0.1", "--trainer.max_steps", "2",
               "--trainer.default_root_dir", str(tmp_path / "resumed"))
    err = one_sentence(*run_main(args, capsys)[::2])
    assert "holds the state of a torch.optim.adamw.AdamW optimizer but model.optimizer is torch.optim.sgd.SGD" in err


SELECTORS = """
import torch
from tiplight.selection import Selector


class FirstColumn(Selector):
    def select(self, stats, generator=None):
        return stats.valid[:, :1]  # broadcasts silently against [R, C]


class Raises(Selector):
    def select(self, stats, generator=None):
        raise RuntimeError("no tokens today")
"""


@pytest.mark.parametrize("name,message", [
    ("FirstColumn", "model.selector FirstColumn returned shape ("),
    ("Raises", "model.selector Raises raised RuntimeError: no tokens today."),
])
def test_a_selector_with_the_wrong_shape_or_that_raises(tiny, prompts_file, tmp_path, capsys, monkeypatch,
                                                        name, message):
    (tmp_path / "bad_selectors.py").write_text(SELECTORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file, "--model.selector",
                                     f"bad_selectors.{name}"), capsys)[::2])
    assert message in err


@pytest.mark.parametrize("lines,message", [
    ([b'{"problem": "1+1?"}', b'{"problem": "caf\xe9"}'], ":2 is not UTF-8 text (byte 0xe9"),
    ([b'{"problem": "1+1?"}', b'{"problem": null}'], ":2 has null 'problem' (data.prompt_field)"),
])
def test_a_prompt_file_that_is_not_utf8_or_has_a_null_prompt(tiny, prompts_file, tmp_path, capsys, lines, message):
    """Once: a bare codec error naming no file; a null prompt trained on as the text "None"."""
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(b"\n".join(lines * 4) + b"\n")
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file, "--data.train_files", f"[{data}]",
                                     "--data.val_size", "0"), capsys)[::2])
    assert f"{data}{message}" in err


def test_a_full_disk_leaves_no_truncated_summary(tiny, prompts_file, tmp_path, capsys, monkeypatch):
    """A half-written summary.json once counted as a finished run in `tiplight study`."""
    write = Path.write_text

    def half(self, text, *args, **kwargs):
        if "summary.json" not in self.name:
            return write(self, text, *args, **kwargs)
        write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half)
    err = one_sentence(*run_main(fit(tmp_path, tiny, prompts_file), capsys)[::2])
    assert "no space left on the device to write" in err
    assert not list((tmp_path / "runs").rglob("*summary.json*"))
