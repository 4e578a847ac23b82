"""The toy task generator: determinism, disjoint splits, and arithmetically correct reference solutions."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

import pytest

from tiplight.toy import TaskConfig, load_problems
from tiplight.toy.evaluate import boxed_answer
from tiplight.toy.task import HELD_OUT

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _value(expr: str) -> Fraction:
    """Exact value of an arithmetic expression over integers (+, -, *, /, parentheses)."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise ValueError(f"unexpected syntax in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


def _gold_value(problem: dict) -> Fraction:
    return sum((Fraction(op) for op in problem["operands"]), Fraction(0))


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_problems("test") + load_problems("train", 3000)


def test_splits_are_deterministic_and_prefix_stable() -> None:
    assert load_problems("test") == load_problems("test")
    assert load_problems("train", 500) == load_problems("train", 2000)[:500]
    assert len(load_problems("test")) == 1200 and len(load_problems("test", 50)) == 50


def test_held_out_test_problems_are_not_in_train() -> None:
    held_out = {p["prompt"] for p in load_problems("test", HELD_OUT)}
    train = {p["prompt"] for p in load_problems("train")}
    assert len(held_out) == HELD_OUT and not held_out & train
    assert len({p["prompt"] for p in load_problems("test")}) == 1200  # distinct, and growable past 300


def test_records_have_the_public_keys(problems: list[dict]) -> None:
    for p in problems[:50]:
        assert {"id", "prompt", "problem", "answer", "solution", "kind", "difficulty"} <= p.keys()
        assert p["prompt"] == p["problem"] and p["prompt"].endswith("?\n")
    assert len({p["id"] for p in problems}) == len(problems)
    assert {p["kind"] for p in problems} == {"add", "frac"}


def test_gold_answer_is_the_exact_value_in_lowest_terms(problems: list[dict]) -> None:
    for p in problems:
        value = _gold_value(p)
        assert Fraction(p["answer"]) == value, p["id"]
        expected = (
            str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
        )
        assert p["answer"] == expected
        assert p["solution"].endswith(f"\\boxed{{{p['answer']}}}")
        assert boxed_answer(p["solution"]) == p["answer"]


def test_every_worked_step_is_correct(problems: list[dict]) -> None:
    for p in problems:
        *steps, _boxed = p["solution"].split("\n")
        assert p["difficulty"] == len(steps)
        if p["kind"] == "frac":
            # Every line is an expression equal to the sum (the first one restates it cross-multiplied).
            assert all(_value(s.removeprefix("=")) == _gold_value(p) for s in steps), p["id"]
        else:
            for s in steps:  # "7+5+1=13 34": the column sum is right and the digits so far are a suffix
                lhs, rhs = s.split("=")
                total, digits = rhs.split(" ")
                assert _value(lhs) == int(total) and p["answer"].endswith(digits), p["id"]
            assert steps[-1].split(" ")[1] == p["answer"]


def test_difficulty_knobs_change_the_problems() -> None:
    hard = load_problems("test", 20, cfg=TaskConfig(p_frac=0.0, add_digits=(5, 5)))
    assert all(p["kind"] == "add" and len(p["operands"][0]) == 5 for p in hard)
    fracs = load_problems("test", 20, cfg=TaskConfig(p_frac=1.0, frac_max_den=3))
    assert all(p["kind"] == "frac" and int(p["operands"][0].split("/")[1]) <= 3 for p in fracs)


def test_unknown_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="split='val'"):
        load_problems("val")
