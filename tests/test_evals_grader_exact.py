"""Answer-checker corners: exact values past the numeric precision, equivalent alternatives, the scan window."""

from __future__ import annotations

import pytest

from tiplight.evals import extract_answer, grade


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"\boxed{60!+1}", "60!", False),
        (r"\boxed{2^{270}-1}", "2^{270}", False),
        (r"\boxed{10^{100}+1}", "10^{100}", False),
        (r"\boxed{\frac{1}{10^{100}}+10^{100}}", "10^{100}", False),
        (r"\boxed{60 \cdot 59!}", "60!", True),
        (r"\boxed{2^{135} \cdot 2^{135}}", "2^{270}", True),
        (r"\boxed{10^{100}+\frac{2}{2}}", "10^{100}+1", True),
    ],
)
def test_exact_values_beyond_the_numeric_precision_are_compared_exactly(response, gold, expected):
    """Integers and fractions differ by 1 in 10^100 here: below the 80-digit numeric agreement."""
    assert grade(response, gold) is expected


MATH500_451 = (  # MATH-500 solution #451 ends with the same value boxed twice
    r"Thus, the answer is $\boxed{15\frac{39}{40}}, \text{ or } \boxed{\frac{639}{40}}$.",
    r"\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}",
)


@pytest.mark.parametrize("response", MATH500_451)
@pytest.mark.parametrize("gold", [r"\frac{639}{40}", r"15\frac{39}{40}", MATH500_451[1]])
def test_the_same_value_offered_twice_with_or_is_one_answer(response, gold):
    assert grade(response, gold) is True


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"$x = \boxed{3}$ or $x = \boxed{-5}$", "3, -5", True),  # "or" still lists the roots
        (r"$x = \boxed{3}$ or $x = \boxed{-5}$", "3", False),  # a hedge is not an answer
        (r"$x = \boxed{3}$ or $x = \boxed{-5}$", "-5", False),
        (r"\boxed{\sqrt{8}} or \boxed{2\sqrt{2}}", r"2\sqrt{2}", True),  # decided by a worker
        (r"\boxed{\sqrt{8}} or \boxed{3\sqrt{2}}", r"2\sqrt{2}", False),
    ],
)
def test_or_between_boxes_lists_answers_unless_they_are_one_value(response, gold, expected):
    assert grade(response, gold) is expected


def test_boxes_joined_by_or_are_extracted_as_alternatives():
    assert extract_answer(MATH500_451[1]) == r"15\frac{39}{40} \text{ or } \frac{639}{40}"


def test_a_box_opened_before_the_scan_window_is_the_answer_not_a_number_inside_it():
    """A box that opens more than MAX_SCAN characters from the end: its content is the answer (too long
    to equal any gold), not the last number of the window."""
    from tiplight.evals.extract import MAX_SCAN

    response = r"So \boxed{" + "1 + " * (MAX_SCAN // 4 + 1000) + "42}."
    assert extract_answer(response).startswith("1 + 1 + ")
    assert grade(response, "42") is False
    closed = r"\boxed{7} " + "and 1 + " * (MAX_SCAN // 8 + 1000) + "42."  # a box closed before the window
    assert extract_answer(closed) == "42"
