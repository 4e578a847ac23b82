"""Turn Math-Verify's public test suite into (response, gold, expected) rows for `grader_accuracy.py`.

Reads the test files of huggingface/Math-Verify (Apache-2.0) from a git checkout or bare mirror, finds
every `@pytest.mark.parametrize` table whose rows hold a gold, a prediction and an expected verdict,
and writes one JSON line per row. Nothing is executed: rows are read with `ast.literal_eval`, and rows
that are not plain literals (an f-string, a call) are skipped and counted.

    python benchmarks/grader_mv_cases.py /work/.mirror/huggingface+Math-Verify/repo \
        > benchmarks/data/math_verify_cases.jsonl

Each row: `gold` and `response` as Math-Verify's test passes them to `parse`, `expected` (bool),
`source` (file::test function), `split` ("unit" for hand-written regression tests, "real" for the
files of real model outputs: test_open_thoughts.py and test_numina_cases.py), and `options` (the
non-default `verify`/`parse` arguments the test uses: match types, float precision).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

FILES = {
    "tests/test_all.py": "unit",
    "tests/test_boxed.py": "unit",
    "tests/test_yujianll.py": "unit",
    "tests/test_open_thoughts.py": "real",
    "tests/test_numina_cases.py": "real",
}
GOLD, PRED = ("gold",), ("pred",)


def _call_options(func: ast.FunctionDef) -> dict:
    """Non-default keyword arguments of the `compare_strings(...)` call in a test body."""
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "compare_strings":
            options = {}
            for kw in node.keywords:
                try:
                    options[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    options[kw.arg] = ast.unparse(kw.value)  # a parameter name such as `precision`
            return options
    return {}


def _rows(source: str, path: str, split: str) -> tuple[list[dict], int]:
    """Rows of every parametrized (gold, pred, expected) table in one test file, and the skip count."""
    rows, skipped = [], 0
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef):
            continue
        for deco in func.decorator_list:
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "parametrize"):
                continue
            names = [n.strip() for n in ast.literal_eval(deco.args[0]).split(",")]
            if "gold" not in names or "pred" not in names:
                continue
            verdict = next(n for n in names if n in ("expected", "result"))
            base = _call_options(func)
            for item in deco.args[1].elts:
                try:
                    values = dict(zip(names, ast.literal_eval(item)))
                except ValueError:
                    skipped += 1
                    continue
                options = {k: values.get(v, v) if isinstance(v, str) else v for k, v in base.items()}
                options.update({k: values[k] for k in names if k not in ("gold", "pred", verdict)})
                rows.append({
                    "response": values["pred"], "gold": values["gold"], "expected": bool(values[verdict]),
                    "source": f"{path}::{func.name}", "split": split, "options": options,
                })  # fmt: skip
    return rows, skipped


def main(repo: str) -> None:
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    total_skipped = 0
    for path, split in FILES.items():
        source = subprocess.run(
            ["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
        ).stdout
        rows, skipped = _rows(source, path, split)
        total_skipped += skipped
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    print(f"commit {commit.strip()}; non-literal rows skipped: {total_skipped}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
