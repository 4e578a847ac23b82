"""Math-Verify's extraction and parsing as the checker's second reader, with tiplight's guards.

Runs only inside a grading worker (`pool.py`): Math-Verify's regex extraction and sympy work are not
linear-time on hostile text, and its own timeouts use `signal.alarm`, which works on the main thread
only. Here they are disabled (`parsing_timeout=None`, `timeout_seconds=None`) and the parent's deadline
kills the worker instead.

`math_verify.parse` reads the full response (boxes joined by words, "Final Answer: the largest $n$ is
34" sentences, assignments, ASCII relations, `\\sec^2(y)`, units and percent words) and `verify`
compares. Its accept counts only when none of the known wrong-accept patterns applies:
complex infinity or nan on either side, `\\ldots` sequences, a multi-item answer against a single
gold, a letter dropped as a unit (`4m` read as 4), deep nesting, and exact constants that agree
only to a few digits (1/2004! vs 1/2006!: Math-Verify's `evalf(chop)` calls both 0). When tiplight
read the same two answers and settled them itself, its exact verdict stands.
"""

from __future__ import annotations

import logging
import re

from tiplight.evals.normalize import clean
from tiplight.evals.parse import parse_node
from tiplight.evals.symbolic import degenerate

logging.getLogger("math_verify").setLevel(logging.CRITICAL)
_ELLIPSIS = ("\\ldots", "\\cdots", "\\dots", "...", "…")
_PRECISION = 60
MAX_DEPTH = 40  # bracket nesting beyond which Math-Verify is not asked
MAX_GOLD_CHARS = 20_000  # a gold solution longer than this is read by tiplight only
_SINGLE_LETTER = re.compile(r"(?<![A-Za-z])[A-DF-HJ-Za-df-hj-z](?![A-Za-z])")  # not e, i


def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def parse_gold(gold: str) -> list:
    """Math-Verify's reading of a gold answer: bare LaTeX is boxed first (a bare `\\dfrac{1}{3}` reads
    as nothing otherwise); a gold with its own delimiters or box is read as written."""
    from math_verify import parse

    wrapped = gold if any(t in gold for t in ("$", "\\boxed", "\\(", "\\[")) else "\\boxed{" + gold + "}"
    return parse(wrapped, _configs(), parsing_timeout=None)


def parse_response(response: str) -> list:
    """Math-Verify's reading of a model output (its extraction cascade; the last answer wins)."""
    from math_verify import parse

    return parse(response, _configs(), parsing_timeout=None)


def verdict(response: str, gold: str, pred: str = "", answer: str = "", settled: bool = False) -> bool:
    """Math-Verify's accept of `response` against `gold`, vetoed by the guards in the module docstring.

    `pred` and `answer` are tiplight's own readings of the response and the gold, and `settled` says
    tiplight parsed both and rejected them: then Math-Verify is heard only when it reads a different
    answer in either text (tiplight's exact comparison of the same two answers stands).
    """
    from math_verify import verify

    bare = _one_box(response) or response.strip() == pred.strip()
    if settled and bare and gold.strip() == answer.strip():
        return False  # Math-Verify would read the same answer and the same gold: nothing new to hear
    if len(gold) > MAX_GOLD_CHARS or max_depth(response) > MAX_DEPTH or max_depth(gold) > MAX_DEPTH:
        return False  # degenerate nesting: the grammar's recursion would only burn the time limit
    g, p = parse_gold(gold), parse_response(response)
    if len(g) < 2 or len(p) < 2:
        return False
    (g_expr, g_text), (p_expr, p_text) = g[:2], p[:2]
    if settled and _within(p_text, pred) and _within(g_text, answer or gold):
        return False
    if any(t in s for s in (g_text, p_text, gold) for t in _ELLIPSIS):
        return False
    if _degenerate(g_expr) or _degenerate(p_expr) or not _shapes_agree(p_text, g_text):
        return False
    if _lost_symbol(p_text, p_expr) or _lost_symbol(g_text, g_expr):
        return False
    if not verify([g_expr], [p_expr], timeout_seconds=None):
        return False
    return _constants_agree(p_expr, g_expr)


def _lost_symbol(text: str, expr) -> bool:
    """A single letter in the answer that the parse dropped as a unit (`4m` read as 4)."""
    from sympy import Basic

    if not isinstance(expr, Basic) or expr.free_symbols:
        return False
    return bool(_SINGLE_LETTER.search(re.sub(r"\\[A-Za-z]+", " ", clean(text))))


def _one_box(text: str) -> bool:
    return text.count("\\boxed") == 1 and "\\fbox" not in text


def max_depth(text: str) -> int:
    """Deepest bracket nesting in `text` (one linear pass)."""
    depth = peak = 0
    for c in text:
        if c in "({[":
            depth += 1
            peak = max(peak, depth)
        elif c in ")}]":
            depth = max(0, depth - 1)
    return peak


def _within(theirs: str, ours: str) -> bool:
    """Math-Verify read the same answer as tiplight, or a part of it (`4` of `4m`: it dropped the
    letter as a unit), up to spacing and wrappers."""
    theirs, ours = clean(theirs).replace(" ", ""), clean(ours).replace(" ", "")
    return bool(theirs) and theirs in ours


def _degenerate(expr) -> bool:
    """Complex infinity or nan anywhere (in any item of a list): `1:00` and `12:00` both read as zoo."""
    items = expr if isinstance(expr, (list, tuple, set, frozenset)) else [expr]
    return any(degenerate(e) for e in items)


def _shapes_agree(p_text: str, g_text: str) -> bool:
    """A single gold needs a single answer (`1,1,1` reads as {1}: not an answer to "1")."""
    p, g = parse_node(clean(p_text)), parse_node(clean(g_text))
    return not (g.kind in ("scalar", "bracket") and p.kind in ("list", "set") and len(p.items) > 1)


def _constants_agree(p, g) -> bool:
    """Exact constants (no floats, no symbols) must agree to `_PRECISION` digits relative to their size;
    Math-Verify's chop reads any two tiny values as equal."""
    from sympy import Expr, Float

    if not (isinstance(p, Expr) and isinstance(g, Expr)):
        return True
    if p.free_symbols or g.free_symbols or p.atoms(Float) or g.atoms(Float):
        return True
    try:
        pv, gv = p.evalf(_PRECISION), g.evalf(_PRECISION)
        scale = max(abs(pv), abs(gv))
        if scale == 0:
            return True
        return bool(abs(pv - gv) <= scale * 10 ** (10 - _PRECISION))
    except (TypeError, ValueError, ArithmeticError):
        return False
