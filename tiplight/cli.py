"""The ``tiplight`` command: LightningCLI subcommands (fit, validate, ...) plus ``tiplight toy ...``."""

from __future__ import annotations

import importlib
import os
import sys

from lightning.pytorch.cli import LightningCLI

from tiplight.data import PromptDataModule
from tiplight.module import DistillModule


class TiplightCLI(LightningCLI):
    """LightningCLI with tiplight's defaults: no automatic optimizer flags (the module owns them),
    and one config file saved per run (overwritten on resume)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs):
        super().__init__(
            DistillModule,
            PromptDataModule,
            subclass_mode_model=False,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )


def main(argv: list[str] | None = None) -> None:
    """``tiplight toy|analyze ...`` or a LightningCLI subcommand. Bad input ends with one sentence on
    stderr (set ``TIPLIGHT_TRACEBACK=1`` for the full traceback). ``TIPLIGHT_PLUGINS=a.b,c`` imports
    plugin modules first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # plugin modules (e.g. selectors) imported before parsing, so YAML can name their classes briefly
    for name in filter(None, os.environ.get("TIPLIGHT_PLUGINS", "").split(",")):
        importlib.import_module(name.strip())
    try:
        if argv[:1] == ["toy"]:
            from tiplight import toy

            raise SystemExit(toy.main(argv[1:]))
        if argv[:1] == ["study"]:
            from tiplight import study

            raise SystemExit(study.main(argv[1:]))
        if argv[:1] == ["analyze"]:
            from tiplight import diagnostics

            raise SystemExit(diagnostics.main(argv[1:]))
        TiplightCLI(args=argv)
    except ValueError as error:
        if os.environ.get("TIPLIGHT_TRACEBACK"):
            raise
        print(f"tiplight: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
