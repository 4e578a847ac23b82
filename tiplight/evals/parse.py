"""Split a cleaned answer into its top-level structure, and read plain numbers exactly.

The structure (relations, unions, sets, intervals/tuples, lists, matrices, `\\pm`) is found here with
bracket-depth scans, so that only scalar pieces ever reach sympy and bracket types are never lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

OPEN, CLOSE = "([{", ")]}"
_RELATIONS = ("\\le", "\\ge", "\\ne", "\\in", "<", ">", "=")
_INT = r"-?\d+"
_DECIMAL = re.compile(r"(-?)(\d*)\.(\d+)")
_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_SLASH = re.compile(r"(-?\d+)\s*/\s*(-?\d+)")
_MIXED = re.compile(r"(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)


@dataclass(frozen=True)
class Node:
    """One level of answer structure.

    kind: "scalar" (text holds the expression), "relation" (items alternate expression / operator),
    "union", "set", "bracket" (interval or tuple: `open`/`close` keep the bracket types), "list" (bare
    comma list), "pm" (the two expansions of a `\\pm`), "matrix" (items are rows, each a "list").
    """

    kind: str
    text: str = ""
    items: tuple[Node, ...] = ()
    open: str = ""
    close: str = ""
    ops: tuple[str, ...] = ()


def split_top(s: str, seps: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split `s` at separators outside any bracket; returns (pieces, separators found)."""
    pieces, found, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and s.startswith(("\\{", "\\}"), i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in OPEN:
            depth += 1
        elif c in CLOSE:
            depth -= 1
        elif depth == 0:
            sep = next((t for t in seps if s.startswith(t, i) and _ends_token(s, i, t)), None)
            if sep is not None:
                pieces.append(s[start:i].strip())
                found.append(sep)
                i += len(sep)
                start = i
                continue
        i += 1
    pieces.append(s[start:].strip())
    return pieces, found


def _ends_token(s: str, i: int, tok: str) -> bool:
    """A LaTeX command separator must not be the prefix of a longer command (`\\in` vs `\\infty`)."""
    end = i + len(tok)
    return not (tok[-1].isalpha() and end < len(s) and s[end].isalpha())


def _outer_pair(s: str) -> bool:
    """True when s[0] is an opening bracket whose partner (of any type) is the last character."""
    depth = 0
    for i, c in enumerate(s):
        depth += c in OPEN
        depth -= c in CLOSE
        if depth == 0:
            return i == len(s) - 1
    return False


def parse_node(s: str, depth: int = 0) -> Node:
    """Structure of a cleaned answer string (see `Node`)."""
    s = s.strip()
    if depth > 8 or not s:
        return Node("scalar", s)
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [r for r in m.group(2).split("\\\\") if r.strip()]
        return Node("matrix", items=tuple(Node("list", items=_scalars(r.split("&"))) for r in rows))
    pieces, seps = split_top(s, (",", ";"))
    if ";" in seps and "," in seps:  # `p=5,q=2;p=7,q=2`: semicolons separate the groups
        pieces = split_top(s, (";",))[0]
    if len(pieces) > 1:
        return Node("list", s, items=tuple(parse_node(p, depth + 1) for p in pieces if p))
    parts, ops = split_top(s, _RELATIONS)
    if ops and all(parts):
        return Node("relation", s, items=tuple(parse_node(p, depth + 1) for p in parts), ops=tuple(ops))
    parts, ops = split_top(s, ("\\cup",))
    if ops:
        return Node("union", s, items=tuple(parse_node(p, depth + 1) for p in parts))
    if s.startswith("\\{") and s.endswith("\\}") and _outer_set(s):
        inner = s[2:-2].strip()
        return Node(
            "set", s, items=tuple(parse_node(p, depth + 1) for p in split_top(inner, (",", ";"))[0] if p)
        )
    if s[0] == "{" and s[-1] == "}" and _outer_pair(s) and "," in s:  # `{-2021, 2021}`: a set, unescaped
        return parse_node("\\{" + s[1:-1] + "\\}", depth + 1)
    if s[0] in "([" and s[-1] in ")]" and _outer_pair(s):
        pieces = split_top(s[1:-1], (",", ";"))[0]  # `(1; 2)`: a pair written with a semicolon
        if len(pieces) == 1:
            return parse_node(pieces[0], depth + 1)
        items = tuple(parse_node(p, depth + 1) for p in pieces)
        return Node("bracket", s, items=items, open=s[0], close=s[-1])
    for pm in ("\\pm", "\\mp"):
        if s.count(pm) == 1:
            plus, minus = ("+", "-") if pm == "\\pm" else ("-", "+")
            return Node(
                "pm", items=(Node("scalar", s.replace(pm, plus)), Node("scalar", s.replace(pm, minus)))
            )
    return Node("scalar", s)


def _outer_set(s: str) -> bool:
    """True when the leading `\\{` closes at the final `\\}`."""
    depth, i = 0, 0
    while i < len(s):
        if s.startswith("\\{", i):
            depth += 1
        elif s.startswith("\\}", i):
            depth -= 1
            if depth == 0:
                return i == len(s) - 2
        i += 1
    return False


def _scalars(cells: list[str]) -> tuple[Node, ...]:
    return tuple(Node("scalar", c.strip()) for c in cells)


def exact_number(s: str) -> tuple[Fraction, int | None] | None:
    """Read an integer, decimal, `a/b`, `\\frac{a}{b}` or mixed number exactly.

    Returns (value, decimals) where decimals is the number of digits after the point for a decimal
    literal (None otherwise), or None when `s` is not a plain number.
    """
    s = s.replace(" ", "").replace("{}", "")
    if s.startswith("+"):
        s = s[1:]
    if re.fullmatch(_INT, s) and len(s) < 4000:
        return Fraction(int(s)), None
    m = _DECIMAL.fullmatch(s)
    if m and len(s) < 4000:
        value = Fraction(int((m.group(2) or "0") + m.group(3)), 10 ** len(m.group(3)))
        return (-value if m.group(1) else value), len(m.group(3))
    m = _FRACTION.fullmatch(s) or _SLASH.fullmatch(s)
    if m and len(s) < 4000:
        sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.re is _FRACTION else ("", *m.groups())
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return (-value if sign else value), None
    m = _MIXED.fullmatch(s)
    if m and len(s) < 4000 and int(m.group(4)) != 0 and int(m.group(3)) < int(m.group(4)):
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return (-value if m.group(1) else value), None
    return None
