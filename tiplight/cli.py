"""The ``tiplight`` command: LightningCLI subcommands (fit, validate, ...) plus ``toy``, ``study``, ``analyze``.

Bad input ends with one sentence on stderr and exit code 2 (``TIPLIGHT_TRACEBACK=1`` shows the
traceback); SIGTERM saves a resumable checkpoint and exits with 143; Ctrl-C says what was written."""

from __future__ import annotations

import errno
import importlib
import os
import pickle
import re
import sys
import zipfile
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning import LightningDataModule
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tiplight.args import moved_option
from tiplight.callbacks import Interruption
from tiplight.console import progress_bar, quiet
from tiplight.files import AtomicCheckpointIO
from tiplight.module import DistillModule
from tiplight.resume import check_resume
from tiplight.teachers import TeacherServerError

COMMANDS = """tiplight's own commands (each has --help):
  tiplight toy build|eval ...    build or evaluate the embedded toy world's models
  tiplight study ...             grids of `fit` runs over seeds, with confidence intervals
  tiplight study report DIR      results.csv, tables and plots of a study
  tiplight analyze RUN_DIR ...   quadrant shares and selector overlap of a run's diagnostics"""


class TiplightCLI(LightningCLI):
    """LightningCLI with tiplight's defaults: any data module by class_path (``tiplight.data.PromptDataModule``
    for prompts, ``tiplight.envs.EpisodeDataModule`` for an environment's problems), no automatic optimizer
    flags (the module owns them), one
    config file saved per run (overwritten on resume), parse errors raised (``main`` condenses them), a
    progress bar that suits the console, and a checkpoint on SIGTERM."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        parser_kwargs = {"exit_on_error": False, **kwargs.pop("parser_kwargs", {})}
        super().__init__(
            DistillModule,
            LightningDataModule,
            subclass_mode_model=False,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: a DistillModule has no test or predict step."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def _parse_ckpt_path(self) -> None:
        # Lightning replaces the model options with the checkpoint's here; tiplight keeps the command's
        # (tiplight.resume) after checking the file
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        check_checkpoint(path)
        try:
            check_resume(self.config[subcommand]["model"].as_dict(), path)
        except pickle.UnpicklingError as error:
            found = re.search(r"Unsupported global: GLOBAL \S+", str(error))
            raise ValueError(f"ckpt_path={path!r} holds objects that safe loading refuses "
                             f"({found.group(0) if found else 'unpicklable content'}); tiplight loads "
                             "checkpoints with weights_only=True and does not run a file's pickled code.") from None

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed < 2**32:
            raise ValueError(f"seed_everything={seed} is not allowed; use an integer from 0 to {2**32 - 1} "
                             "(or true for a random seed).")
        super()._set_seed()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        configured = config.get("callbacks") or []
        given = [*(configured if isinstance(configured, list) else [configured]), *callbacks]
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks = [*callbacks, progress_bar()]
        if not config.get("plugins"):  # checkpoints under their final name only once complete
            config = {**config, "plugins": [AtomicCheckpointIO()]}
        try:
            return super()._instantiate_trainer(config, [*callbacks, Interruption()])
        except MisconfigurationException as error:
            if "No supported gpu backend found" not in str(error):
                raise
            raise ValueError(f"trainer.accelerator={config.get('accelerator')!r} needs a GPU and this machine has "
                             "none; on a CPU-only machine add --trainer.accelerator cpu --trainer.devices 1 "
                             "(configs/toy.yaml runs the whole loop on a CPU in minutes).") from None


def check_checkpoint(path: str) -> None:
    """A clear error for a ``ckpt_path`` that is missing, empty or not a PyTorch checkpoint (truncated)."""
    p = Path(path)
    if path in ("last", "best", "hpc") or path.startswith("registry"):  # Lightning's names
        return
    if p.is_dir():
        if (p / ".metadata").is_file() or (p / "meta.pt").is_file():  # a sharded (distributed) checkpoint
            return
        raise ValueError(f"ckpt_path={path!r} is a folder, not a checkpoint; give a .ckpt file written by "
                         "`tiplight fit` (or a sharded checkpoint's folder, which holds .metadata).")
    if not p.is_file():
        raise ValueError(f"ckpt_path={path!r} does not exist; give a .ckpt file written by `tiplight fit`.")
    if p.stat().st_size == 0 or not zipfile.is_zipfile(p):
        state = "is empty" if p.stat().st_size == 0 else "is not a PyTorch checkpoint (truncated or another format)"
        raise ValueError(f"ckpt_path={path!r} {state}; give a .ckpt file written by `tiplight fit`.")


def replaced_option(option: str) -> str | None:
    """The sentence for an option that a release removed (``model.divergence``) or moved into a group
    (``model.chunk_size`` -> ``model.memory.chunk_size``), or None."""
    from tiplight.objectives import list_objectives

    if option in ("model.divergence", "model.jsd_beta"):
        return (f"{option} is gone: model.objective replaced model.divergence and model.jsd_beta; give it a "
                f"class_path ({', '.join(list_objectives())}), e.g. --model.objective JSD --model.objective.beta 0.3.")
    if option == "model.denominator":
        return ("model.denominator is gone: it moved into the objective as model.objective.init_args.denominator "
                "(kept or valid), e.g. --model.objective ReverseKL --model.objective.denominator valid.")
    moved = moved_option(option)
    if moved is not None:
        group, name = moved.split(".")[1:]
        return (f"{option} has moved to {moved}: write --{moved} on the command line, or "
                f"model: {{{group}: {{{name}: ...}}}} in a config file.")
    return None


def replaced_in(argv: list[str], message: str = "") -> str | None:
    """The sentence for a removed option named on the command line (``--model.divergence``: argparse would
    take it for an abbreviation of ``--model.divergence_threshold``) or in a config file (jsonargparse's
    ``message``), or None."""
    named = [arg[2:].split("=")[0] for arg in argv if arg.startswith("--")]
    found = re.findall(r"(?:Group '([\w.]+)' )?does not accept (?:nested key|option) '([\w.]+)'", message)
    named += [f"{group}.{key}" if group else key for group, key in found]
    return next(filter(None, map(replaced_option, named)), None)


_NOISE_LINES = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|"
                          r"Expected a <class 'NoneType'>|Given value type:|Given value:|"
                          r"Problem with given class_path)")


def condense(message: str) -> str:
    """One sentence from a jsonargparse error: the key, the specific complaints, and the valid choices."""
    lines = [re.sub(r"^\s*-\s+", "", line).strip() for line in message.splitlines()]  # bullets off
    key = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0]) if lines else None
    specific = [line for line in ([key.group(2)] if key else [lines[0]]) + lines[1:]
                if line and not _NOISE_LINES.match(line) and not line.startswith('Parser key "')]
    text = "; ".join(dict.fromkeys(specific)) or message.strip()
    if key is None:
        return text
    name = _field(message)
    choice = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)", message)
    if choice:
        allowed = ", ".join(v.strip(" '\"") for v in choice.group(1).split(","))
        return f"{name}={choice.group(2).strip()!r} is not allowed; use one of {allowed}."
    kinds = [_KINDS.get(t, f"a {t}") for t in re.findall(r"Expected a <class '(\w+)'>", message) if t != "NoneType"]
    got = re.search(r"Got value: (.*)", message) or re.search(r"^\s*Given value: (?!NestedArg)(.*)$", message, re.M)
    if kinds and got:
        return f"{name}={got.group(1).strip()!r} is not allowed; use {' or '.join(dict.fromkeys(kinds))}."
    hint = ""
    if name.endswith("selector"):
        from tiplight.selection import list_selectors

        hint = f"; registered selectors: {', '.join(list_selectors())} (or a dotted class path)"
    if name.endswith("objective"):
        from tiplight.objectives import list_objectives

        hint = f"; registered objectives: {', '.join(list_objectives())} (or a dotted class path)"
    klass = re.search(r"Problem with given class_path '([\w.]+)'", message)
    if klass and "is not accepted" in message:
        hint = f"; {klass.group(1).rsplit('.', 1)[-1]} accepts: {', '.join(_init_args(klass.group(1)))}"
    return f"{name}: {text}{hint}."


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _field(message: str) -> str:
    """The option a jsonargparse error is about, nested keys of a class_path joined through ``init_args``
    (``data`` + ``overlong`` -> ``data.init_args.overlong``)."""
    name, nested = "", False
    for line in message.splitlines():
        key = re.search(r'Parser key "([^"]+)":', line)
        if key:
            name += (".init_args." if nested else ".") + key.group(1) if name else key.group(1)
            nested = False
        elif "Problem with given class_path" in line:
            nested = True
    return name


def _init_args(class_path: str) -> list[str]:
    import inspect

    module, _, name = class_path.rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    return [p for p in params if p not in ("self", "args", "kwargs")]


def load_plugins(names: str) -> None:
    """Import the comma-separated modules of ``TIPLIGHT_PLUGINS``; one sentence for one that fails."""
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(f"TIPLIGHT_PLUGINS={names!r}: module {name!r} cannot be imported ({error}); give "
                             "importable module names separated by commas.") from error
        except Exception as error:  # the plugin's own code failed while importing
            raise ValueError(f"TIPLIGHT_PLUGINS={names!r}: importing module {name!r} raised "
                             f"{type(error).__name__}: {error}.") from error


def describe_os_error(error: OSError) -> str:
    """One sentence for a file-system error: a full disk, an unwritable folder, or what the system said."""
    where = f" {error.filename}" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device to write{where}; free some space (or set trainer.default_root_dir "
                "elsewhere) and resume from the last checkpoint with --ckpt_path.")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
        return (f"cannot write{where} ({error.strerror}); choose a writable output folder "
                "(trainer.default_root_dir, the logger's save_dir).")
    return f"{error.filename}: {error.strerror}." if error.filename and error.strerror else f"{error}."


def _subcommand(argv: list[str]) -> int | None:
    """Run ``toy`` / ``study`` / ``analyze``; None for a LightningCLI subcommand."""
    if argv[:1] == ["toy"]:
        from tiplight import toy

        return toy.main(argv[1:])
    if argv[:1] == ["study"]:
        from tiplight import study

        return study.main(argv[1:])
    if argv[:1] == ["analyze"]:
        from tiplight import diagnostics

        return diagnostics.main(argv[1:])
    return None


def main(argv: list[str] | None = None) -> None:
    """``tiplight toy|study|analyze ...`` or a LightningCLI subcommand. ``TIPLIGHT_PLUGINS=a.b,c`` imports
    plugin modules first (so YAML can name their classes briefly)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet()
    if not argv or argv[0] in ("-h", "--help"):
        print(COMMANDS + "\n\nLightningCLI's subcommands:")
    try:
        load_plugins(os.environ.get("TIPLIGHT_PLUGINS", ""))
        code = _subcommand(argv)
        if code is not None:
            raise SystemExit(code)
        replaced = replaced_in(argv)
        if replaced is not None:
            raise ValueError(replaced)
        TiplightCLI(args=argv)
    except (ValueError, ArgumentError, MisconfigurationException, OSError, TeacherServerError) as error:  # OSError: a full disk...
        if os.environ.get("TIPLIGHT_TRACEBACK"):
            raise
        text = describe_os_error(error) if isinstance(error, OSError) else (
            replaced_in([], str(error)) or condense(str(error)))
        print(f"tiplight: error: {text}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:
        raise SystemExit(143) from None  # 128 + SIGTERM, as schedulers expect of a terminated job


if __name__ == "__main__":
    main()
