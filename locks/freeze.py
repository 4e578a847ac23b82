"""Write a lock (pip constraints) from an environment, or name what an environment has that differs from one.

    python locks/freeze.py write VENV LOCK [--title TEXT]   # VENV's packages, pinned, into LOCK
    python locks/freeze.py diff VENV LOCK                   # packages whose version differs from LOCK

A lock pins every installed distribution except the project itself; torch is pinned without its local
label (``2.13.0``, not ``2.13.0+cpu``) so the same line admits the CPU build and PyPI's CUDA build.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
from pathlib import Path

LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def installed(venv: Path) -> dict[str, str]:
    """{normalised name: version} of what ``venv``'s pip sees, the editable project excluded."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    return parse(out)


def parse(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match:
            name, version = match.groups()
            pins[normalise(name)] = version.split("+")[0] if normalise(name) == "torch" else version
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write(venv: Path, lock: Path, title: str) -> None:
    pins = installed(venv)
    header = (f"# {title}\n# Written by `python locks/freeze.py write` on {datetime.date.today()} from an environment "
              f"whose test suite passed\n# (Python {platform.python_version()}, {platform.machine()}); refresh with "
              "`make lock` (README: Install).\n")
    lock.write_text(header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    print(f"locks: wrote {len(pins)} pins to {lock}")


def diff(venv: Path, lock: Path) -> list[str]:
    """One line per package whose version in ``venv`` is not the locked one (or is not locked)."""
    have, locked = installed(venv), parse(lock.read_text())
    return [f"{name} {locked.get(name, '(not locked)')} -> {version}" for name, version in sorted(have.items())
            if locked.get(name) != version]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["write", "diff"])
    parser.add_argument("venv", type=Path)
    parser.add_argument("lock", type=Path)
    parser.add_argument("--title", default="tiplight: the versions its test suite passed with")
    args = parser.parse_args(argv)
    if args.action == "write":
        write(args.venv, args.lock, args.title)
    else:
        lines = diff(args.venv, args.lock)
        print("\n".join(f"  {line}" for line in lines) or f"  (none: every package is at its {args.lock} version)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
