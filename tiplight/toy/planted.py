"""The overconfident toy world: a student that learned one wrong rule, confidently, and where it errs.

The planted rule is a forgotten carry (``task.carry_free_sum``): the student's training solutions never
carry, neither between the columns of an integer sum (``7+5=12`` is followed by ``3+4=7``, not
``3+4+1=8``) nor inside the numerator sum of a fraction (``=(18+25)/24`` then ``=33/24``). The teacher
learned the true working. Everything else is the toy world as it is (same prompts, splits, answers).

``planted_error_mask`` is the ground truth a diagnostic needs: per completion token, whether the
student's planted rule and the true rule predict different tokens there, given the working written so
far. Such a position is one per carry: the token after ``x+y`` in a column that follows a column summing
to 10 or more (the teacher writes ``+1``, the planted student ``=``), and the first numerator digit of a
fraction where the carry-free sum differs from the true one. The mask is a function of the text alone,
so it holds whatever the student actually sampled there.
"""

from __future__ import annotations

import re

from tiplight.toy.task import add_solution, carry_free_sum, frac_solution, load_problems

_COLUMN = re.compile(r"\d\+\d")  # a column's two digits, before its "+1" or "="
_COLUMN_TOTAL = re.compile(r"\d\+\d(?:\+1)?=(\d+) ")  # a written column and its total
_NUMERATOR_SUM = re.compile(r"=\((\d+)\+(\d+)\)/\d+")  # the fraction line before the summed numerator


def planted_problem(problem: dict) -> dict:
    """``problem`` with the student's wrong working: its ``solution`` and ``answer`` under the forgotten carry."""
    if problem["kind"] == "add":
        a, b = map(int, problem["operands"])
        solution, answer = add_solution(a, b, forget_carry=True)
    else:
        (a, b), (c, d) = (map(int, operand.split("/")) for operand in problem["operands"])
        solution, answer = frac_solution(a, b, c, d, forget_carry=True)
    return {**problem, "solution": solution, "answer": answer}


def load_planted_problems(split: str, n: int | None = None) -> list[dict]:
    """The toy problems of ``split`` (``task.load_problems``) with the planted wrong working."""
    return [planted_problem(p) for p in load_problems(split, n)]


def planted_error_mask(prompt: str, tokens: list[str]) -> list[bool]:
    """Per completion token, whether it sits where the planted rule departs from the true one.

    Args:
        prompt: the problem text (the toy rule reads only the working; other worlds may need it).
        tokens: the completion's tokens as text, in order (``tokens[i]`` is predicted from
            ``prompt + tokens[:i]``).

    Returns:
        ``len(tokens)`` bools: ``mask[i]`` is True when the next-token rule at ``tokens[:i]`` differs.
    """
    mask, text = [], ""
    for token in tokens:
        mask.append(_departs_after(text))
        text += token
    return mask


def _departs_after(text: str) -> bool:
    """Whether the true and the carry-free working predict different next tokens after ``text``."""
    *before, line = text.split("\n")
    if not before:
        return False
    previous = before[-1]
    if _COLUMN.fullmatch(line):  # the next token is "+1" after a carry, "=" under the planted rule
        total = _COLUMN_TOTAL.match(previous)
        return total is not None and int(total.group(1)) >= 10
    operands = _NUMERATOR_SUM.fullmatch(previous)
    if operands is None or not line.startswith("="):
        return False
    p, q = map(int, operands.groups())
    true, planted = str(p + q), str(carry_free_sum(p, q))
    agree = next((i for i, (x, y) in enumerate(zip(true, planted)) if x != y), min(len(true), len(planted)))
    return true != planted and line[1:] == true[:agree]
