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
