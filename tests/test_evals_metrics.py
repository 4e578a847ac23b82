"""pass@k, maj@k and the metric table."""

from __future__ import annotations

import itertools
import math

import pytest

from tiplight.evals.metrics import compute_metrics, majority_vote, pass_at_k


@pytest.mark.parametrize(("n", "c", "k"), [(4, 0, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 3, 6), (8, 7, 2)])
def test_pass_at_k_is_the_subset_probability(n, c, k):
    subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(1024, 1, 16)
    assert value == pytest.approx(16 / 1024)
    assert math.isfinite(pass_at_k(4096, 4000, 4096))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_majority_counts_equivalent_answers_together():
    # "0.5" and "\frac12" are one class (2 votes) and beat "3" (1 vote), even though written differently
    assert majority_vote(["3", "0.5", r"\frac{1}{2}", None, None], [False, True, True, False, False])
    assert not majority_vote(["3", "3", r"\frac{1}{2}"], [False, False, True])
    assert not majority_vote([None, None], [False, False])


def test_compute_metrics_breakdowns():
    records = [
        {"verdicts": [True, True], "maj_correct": True, "subject": "Algebra", "level": 1},
        {"verdicts": [True, False], "maj_correct": True, "subject": "Algebra", "level": 2},
        {"verdicts": [False, False], "maj_correct": False, "subject": "Geometry", "level": 2},
    ]
    m = compute_metrics(records, k=2)
    assert m["mean@2"] == pytest.approx(0.5) == m["accuracy"]
    assert m["pass@2"] == pytest.approx(2 / 3)
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["maj@2"] == pytest.approx(2 / 3)
    assert m["subject_Algebra/mean@2"] == pytest.approx(0.75)
    assert m["level_2/pass@2"] == pytest.approx(0.5)
    assert m["num_problems"] == 3
