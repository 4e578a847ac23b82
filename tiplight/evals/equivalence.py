"""Structural answer equivalence, parametrised by a scalar comparator.

`equivalent(pred, gold, comparator)` cleans both strings, matches their structure (see
`parse.Node`) and hands only scalar pieces to the comparator. `FastComparator` decides plain numbers
exactly in-process and raises `Undecided` for anything that needs sympy; `symbolic.SympyComparator`
(run in a worker process) decides the rest. Gold comes first: the rules are deliberately asymmetric.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Protocol

from tiplight.evals.normalize import clean, is_text_answer, text_key, text_key_raw
from tiplight.evals.parse import Node, exact_number, parse_node, split_top

_SYMBOL = re.compile(r"[A-Za-z]|\\(?:alpha|beta|gamma|theta|lambda|mu|phi|omega|rho|sigma|tau)")
_BASE = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")
_FLIP = {"<": ">", ">": "<", "\\le": "\\ge", "\\ge": "\\le", "=": "=", "\\ne": "\\ne"}
MAX_ITEMS = 64
MAX_ALTERNATIVES = 8
_TEXT_OR = re.compile(r"\\text\{\s*or\s*\}")
_SUBSCRIPT = re.compile(r"_\{[^{}]{0,20}\}|_[0-9A-Za-z]")
_LABEL = re.compile(r"(?:\\[A-Za-z]+|[A-Za-z(),|:{} ])+")
_CHOICE = re.compile(r"\(([A-E])\)")
_CHOICE_PREFIX = re.compile(r"\(?([A-Ea-e])(?:\)|$)")
_CHOICE_LEAD = re.compile(r"\(?([A-E])(?:\)|[.:]\s)")  # "C. x = 42", "(C) 12", "C: 12"


class Undecided(Exception):
    """Raised by a comparator that cannot decide without sympy."""


class Comparator(Protocol):
    """Scalar decisions used by `equivalent`."""

    def scalar(self, pred: str, gold: str) -> bool:
        """Are two scalar expressions equal?"""
        ...

    def proportional(self, pred: str, gold: str, positive: bool) -> bool:
        """Is pred = c * gold for a constant c != 0 (c > 0 when `positive`)? Used for relations."""
        ...


class FastComparator:
    """Exact in-process decisions for plain numbers, base-b numerals and identical strings.

    The in-process path cannot be killed, so it has a budget of scalar comparisons (nested find-all
    sets could otherwise cost |items|^(2 * depth)); past it, the pair goes to a worker with a timeout.
    """

    budget: int = 5_000

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise Undecided

    def scalar(self, pred: str, gold: str) -> bool:
        """See `Comparator.scalar`; raises `Undecided` when sympy is needed."""
        self._spend()
        pred, gold = pred.strip(), gold.strip()
        if pred == gold:
            return True
        base = _BASE.fullmatch(gold)
        if base and int(base.group(2)) <= 36:
            pm = _BASE.fullmatch(pred)
            digits = pm.group(1) if pm and pm.group(2) == base.group(2) else pred
            return digits.lower() == base.group(1).lower()
        p, g = exact_number(pred), exact_number(gold)
        if p is not None and g is not None:
            return numbers_match(p[0], p[1], g[0], g[1], pred)
        raise Undecided

    def proportional(self, pred: str, gold: str, positive: bool) -> bool:
        """See `Comparator.proportional`; only identical strings are decided here."""
        if pred.replace(" ", "") == gold.replace(" ", ""):
            return True
        raise Undecided


def numbers_match(p: Fraction, p_dec: int | None, g: Fraction, g_dec: int | None, pred_text: str) -> bool:
    """Exact equality, with tolerance only for decimal approximations, relative to the digits given.

    A decimal gold (k decimals) accepts a more precise pred that rounds to it (|p-g| <= 0.5e-k). A
    decimal pred (k decimals) of an exact gold is accepted only when the gold cannot be written with k
    decimals (1/3, not 0 or 5), the pred has at least 4 significant digits, and |p-g| <= 1e-k (rounded
    or truncated). So 14917 != 14916, 0.0005 != 0 and 4.99 != 5.
    """
    if p == g:
        return True
    if g_dec is not None:
        return (p_dec is None or p_dec > g_dec) and abs(p - g) <= Fraction(1, 2 * 10**g_dec)
    if p_dec is None or (g * 10**p_dec).denominator == 1:
        return False
    significant = len(re.sub(r"\D", "", pred_text).lstrip("0"))
    return significant >= 4 and abs(p - g) <= Fraction(1, 10**p_dec)


def equivalent(pred: str, gold: str, comparator: Comparator) -> bool:
    """Is the (extracted) pred answer equivalent to the gold answer? May raise `Undecided`."""
    choice = _CHOICE.fullmatch(text_key_raw(gold)) or _choice_with_text(gold, pred)
    if choice:  # multiple choice: "C", "(C)", "\\text{(C)}", or "(C) 12" with the value after the letter
        key = text_key_raw(pred)
        stated = _CHOICE_PREFIX.match(key) or _CHOICE_LEAD.match(pred.strip())  # "C. x = 42"
        hedged = len(set(re.findall(r"\(([A-Ea-e])\)", key.upper()))) > 1  # "(C) and (D)"
        return bool(stated) and not hedged and stated.group(1).lower() == choice.group(1).lower()
    if is_text_answer(gold):
        return text_key(pred) == text_key(gold) and bool(text_key(gold))
    preds, golds = alternatives(pred), alternatives(gold)
    if len(preds) * len(golds) > 1 and all(_same_value(p, g, comparator) for p in preds for g in golds):
        return True  # `15\frac{39}{40} \text{ or } \frac{639}{40}`: one value, written twice
    return _same_value(pred, gold, comparator)  # otherwise "or" lists answers: `x = 1 or x = 2`


def alternatives(s: str) -> list[str]:
    """The top-level pieces of `s` joined by "or" (`\\text{ or }` or the bare word); `[s]` when there is
    none or too many."""
    pieces, _ = split_top(_TEXT_OR.sub(r"\text{ or }", s), ("\text{ or }", " or "))
    return pieces if 1 < len(pieces) <= MAX_ALTERNATIVES and all(pieces) else [s]


def _same_value(pred: str, gold: str, comparator: Comparator) -> bool:
    p, g = clean(pred), clean(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    return match(parse_node(p), parse_node(g), comparator)


def _choice_with_text(gold: str, pred: str) -> re.Match | None:
    """The gold's choice letter when a choice is written with its content: the gold "C. x = 42", or a
    letter gold "C" answered with "C. x = 42" (or any other letter and content)."""
    lead = _CHOICE_LEAD.match(gold.strip())
    if lead:
        return lead
    letter = re.fullmatch(r"([A-E])", gold.strip())
    return letter if letter and _CHOICE_LEAD.match(pred.strip()) else None


def match(p: Node, g: Node, cmp: Comparator) -> bool:
    """Structural comparison of pred node `p` against gold node `g`."""
    if len(p.items) > MAX_ITEMS or len(g.items) > MAX_ITEMS:
        return False
    if p.kind == "relation" and g.kind != "relation" and set(p.ops) <= {"=", "\\in"}:
        # "x = 5", "x = 2 + 3 = 5", "x \in [1, 2]": the last stated value is the answer
        return match(p.items[-1], g, cmp)
    if g.kind == "scalar":
        return p.kind == "scalar" and cmp.scalar(p.text, g.text)
    if g.kind == "relation":
        return _match_relation(p, g, cmp)
    if g.kind == "list" and p.kind == "bracket" and _assignments(g):  # gold "p=5, q=2", pred "(5, 2)"
        return _match_ordered(p.items, tuple(item.items[-1] for item in g.items), cmp)
    if g.kind in ("set", "list", "pm"):
        return p.kind in ("set", "list", "pm") and _match_multiset(_distinct_tuples(p.items), g.items, cmp)
    if g.kind == "union":
        return p.kind == "union" and _match_multiset(p.items, g.items, cmp)
    if g.kind == "bracket":
        same_brackets = p.kind == "bracket" and (p.open, p.close) == (g.open, g.close)
        bare_tuple = p.kind == "list" and (g.open, g.close) == ("(", ")")
        return (same_brackets or bare_tuple) and _match_ordered(p.items, g.items, cmp)
    if g.kind == "matrix":
        rows = zip(p.items, g.items)
        return (
            p.kind == "matrix"
            and len(p.items) == len(g.items)
            and all(_match_ordered(pr.items, gr.items, cmp) for pr, gr in rows)
        )
    return False


def _match_ordered(ps: tuple[Node, ...], gs: tuple[Node, ...], cmp: Comparator) -> bool:
    return len(ps) == len(gs) and all(match(p, g, cmp) for p, g in zip(ps, gs))


def _match_multiset(ps: tuple[Node, ...], gs: tuple[Node, ...], cmp: Comparator) -> bool:
    """Order-free match of every gold item to a distinct pred item: no missing or extra items.

    Equivalence is transitive, so a greedy assignment finds a full match whenever one exists.
    """
    if len(ps) != len(gs):
        return False
    unused = list(ps)
    for g in gs:
        hit = next((i for i, p in enumerate(unused) if match(p, g, cmp)), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True


def _assignments(n: Node) -> bool:
    """`p=5, q=2`: a list of values each named by a label."""
    return all(_is_chain(item) and len(item.ops) == 1 and _is_label(item.items[0]) for item in n.items)


def _distinct_tuples(items: tuple[Node, ...]) -> tuple[Node, ...]:
    """A solution set of tuples listed with a repeat (`(3,17,3,7), ..., (3, 17, 3, 7)`) is the set;
    repeated numbers are kept (`1, 2, 2` is not the answer `1, 2`: multiplicities may be the point)."""
    if not items or any(item.kind != "bracket" for item in items):
        return items
    seen: dict[str, Node] = {}
    for item in items:
        seen.setdefault(item.text.replace(" ", ""), item)
    return tuple(seen.values())


def _is_chain(n: Node) -> bool:
    """`x = a` or `x = a = b = c`: a worked value, whose last member is the value stated."""
    return n.kind == "relation" and bool(n.ops) and set(n.ops) == {"="}


def _is_inequality(n: Node) -> bool:
    return n.kind == "relation" and bool(n.ops) and all(o in ("<", ">", "\\le", "\\ge") for o in n.ops)


def _is_label(n: Node) -> bool:
    """A name for the answer rather than a quantity: `x`, `f(x)`, `(p,q)`, `|AB|`, `A:B`, `a_1`, `\\angle A`."""
    text = _SUBSCRIPT.sub("", n.text)
    return bool(text) and bool(_LABEL.fullmatch(text)) and bool(re.search(r"[A-Za-z]", text))


def _is_symbol(n: Node) -> bool:
    return n.kind == "scalar" and bool(_SYMBOL.fullmatch(n.text))


def _is_constant(n: Node) -> bool:
    """No free letters outside LaTeX commands (so `\\frac{\\pi}{2}` is constant, `2x+1` is not)."""
    return n.kind == "scalar" and not re.search(r"[A-Za-df-z]", re.sub(r"\\[A-Za-z]+", "", n.text))


def _match_relation(p: Node, g: Node, cmp: Comparator) -> bool:
    gl = g.items
    if g.ops == ("=",) and p.kind != "relation" and _is_label(gl[0]):
        # gold "x = 5", "f(x) = 1", "(p,q) = (3,2)", "|AB| = 1", "y = 2x + 3" names its value; pred
        # "5" or "2x + 3" states it (as Math-Verify and NeMo-Skills accept)
        return match(p, gl[1], cmp)
    if _is_chain(p) and _is_chain(g) and _is_label(g.items[0]) and p.items[0].text == g.items[0].text:
        return match(p.items[-1], g.items[-1], cmp)  # "x = 5+5+1 = 11" states x = 11
    if p.kind == "relation" and p.ops == ("\\in",) and _is_inequality(g):
        p = p.items[-1]  # "x \in [1, 2]" against "1 \le x \le 2"
    if g.ops == ("\\ne",) and p.kind == "union" and _is_label(gl[0]):  # x != 3: (-oo, 3) U (3, oo)
        below, above = (
            inequality_to_interval(Node("relation", items=gl, ops=("<",))),
            inequality_to_interval(Node("relation", items=gl, ops=(">",))),
        )
        return match(p, Node("union", items=(below, above)), cmp)
    if _is_inequality(g) and p.kind in ("bracket", "union"):
        interval = inequality_to_interval(g)
        return interval is not None and match(p, interval, cmp)
    if p.kind != "relation" or len(p.ops) != len(g.ops):
        return False
    pl, pops = p.items, p.ops
    if pops != g.ops:
        if tuple(_FLIP.get(o, o) for o in reversed(pops)) != g.ops:
            return False
        pl, pops = tuple(reversed(pl)), g.ops
    if len(pops) > 1 or "\\in" in pops:
        return _match_ordered(pl, gl, cmp)
    if _is_symbol(gl[0]) and pl[0].kind == "scalar" and pl[0].text == gl[0].text:
        return match(pl[1], gl[1], cmp)
    if not all(n.kind == "scalar" for n in (*pl, *gl)):
        return False
    p_expr, g_expr = f"({pl[0].text})-({pl[1].text})", f"({gl[0].text})-({gl[1].text})"
    return cmp.proportional(p_expr, g_expr, positive=pops[0] != "=")


def inequality_to_interval(g: Node) -> Node | None:
    """`x > 3` -> (3, oo); `-2 \\le x < 5` -> [-2, 5). None for other relations."""
    items, ops = g.items, g.ops
    strict = {"<": True, ">": True, "\\le": False, "\\ge": False}
    if len(ops) == 2:
        return _two_sided(items, ops, strict)
    if len(ops) != 1 or ops[0] not in strict:
        return None
    if _is_label(items[0]):
        op, bound = ops[0], items[1]
    elif _is_label(items[1]):
        op, bound = _FLIP[ops[0]], items[0]
    else:
        return None
    inf = Node("scalar", "\\infty")
    if op in ("<", "\\le"):
        return Node(
            "bracket", items=(Node("scalar", "-\\infty"), bound), open="(", close=")" if strict[op] else "]"
        )
    return Node("bracket", items=(bound, inf), open="(" if strict[op] else "[", close=")")


def _two_sided(items: tuple[Node, ...], ops: tuple[str, ...], strict: dict[str, bool]) -> Node | None:
    if ops[0] not in ("<", "\\le") or ops[1] not in ("<", "\\le") or not _is_label(items[1]):
        return None
    return Node(
        "bracket",
        items=(items[0], items[2]),
        open="(" if strict[ops[0]] else "[",
        close=")" if strict[ops[1]] else "]",
    )


def final_rejection(pred: str, gold: str) -> bool:
    """Is an in-process rejection certain? Yes when both answers are plain numbers (compared exactly)
    or the gold is a choice letter or words; otherwise a worker reads the response again."""
    if _CHOICE.fullmatch(text_key_raw(gold)) or is_text_answer(gold):
        return True
    return exact_number(clean(pred)) is not None and exact_number(clean(gold)) is not None
