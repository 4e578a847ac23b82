"""Planted-error recall (``selection.planted_recall``) against direct counts, and its plumbing: the mask
loader, the step metrics, and the run summary's mean over the steps where it is defined."""

from __future__ import annotations

import math

import pytest
import torch

from tiplight.planted import load_planted_mask
from tiplight.selection import TokenStats, planted_recall
from tiplight.step_log import step_metrics


def _direct(planted: list[list[int]], keep: list[list[float]], valid: list[list[int]]) -> dict[str, float]:
    """Recall, precision and share counted token by token in plain Python."""
    hits = n_planted = n_kept = n_valid = 0
    for p_row, k_row, v_row in zip(planted, keep, valid):
        for p, k, v in zip(p_row, k_row, v_row):
            if v:
                n_valid += 1
                n_planted += bool(p)
                n_kept += k != 0
                hits += bool(p) and k != 0
    nan = float("nan")
    return {"recall": hits / n_planted if n_planted else nan, "precision": hits / n_kept if n_kept else nan,
            "share": n_planted / n_valid if n_valid else nan}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k]) or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.parametrize("seed", range(5))
def test_recall_matches_direct_counts_with_weights_and_invalid_positions(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    planted = torch.rand(6, 9, generator=g) < 0.2
    keep = (torch.rand(6, 9, generator=g) < 0.5).float() * torch.rand(6, 9, generator=g)  # float weights
    valid = torch.rand(6, 9, generator=g) < 0.8
    valid[2] = False  # an all-invalid row: planted or kept there counts for nothing
    planted[2], keep[2] = True, 1.0
    keep[4] = 0.0  # an empty row of the kept set
    got = planted_recall(planted, keep, valid)
    assert _same(got, _direct(planted.int().tolist(), keep.tolist(), valid.int().tolist()))


def test_recall_is_nan_where_its_denominator_is_empty() -> None:
    valid = torch.tensor([[True, True, False]])
    nothing = torch.zeros(1, 3, dtype=torch.bool)
    r = planted_recall(nothing, valid, valid)  # no planted token: recall undefined, precision 0
    assert math.isnan(r["recall"]) and r["precision"] == 0 and r["share"] == 0
    r = planted_recall(valid, nothing, valid)  # nothing kept: precision undefined, recall 0
    assert r["recall"] == 0 and math.isnan(r["precision"]) and r["share"] == 1
    r = planted_recall(valid, valid, nothing)  # no valid token at all
    assert all(math.isnan(v) for v in r.values())
    r = planted_recall(torch.tensor([[True, False, True]]), torch.tensor([[True, True, True]]), valid)
    assert r == {"recall": 1.0, "precision": 0.5, "share": 0.5}  # the invalid planted, kept token counts not


def test_step_metrics_log_recall_only_when_the_world_gives_planted_errors() -> None:
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(4, 7, generator=g) < 0.9
    stats = TokenStats.from_raw(torch.rand(4, 7, generator=g), torch.rand(4, 7, generator=g),
                                torch.rand(4, 7, generator=g), valid)
    keep = (torch.rand(4, 7, generator=g) < 0.5) & valid
    planted = torch.rand(4, 7, generator=g) < 0.3
    assert not [k for k in step_metrics(stats, keep) if k.startswith("planted/")]
    metrics = step_metrics(stats, keep, planted=planted)
    assert {k: metrics[f"planted/{k}"] for k in ("recall", "precision", "share")} == planted_recall(planted, keep, valid)
    assert not [k for k in step_metrics(stats, None, planted=planted) if k.startswith("planted/")]


def test_the_mask_loader_names_the_option_and_the_value() -> None:
    from tiplight.toy.planted import planted_error_mask

    assert load_planted_mask("tiplight.toy.planted.planted_error_mask") is planted_error_mask
    for bad in ("tiplight.toy.planted.nothing_here", "no_such_module.f", "nodots", "tiplight.toy.planted.re"):
        with pytest.raises(ValueError, match=rf"model.logging.planted_errors='{bad}' is not an importable function"):
            load_planted_mask(bad)


def test_the_run_summary_averages_a_metric_over_the_steps_that_define_it() -> None:
    from types import SimpleNamespace

    from tiplight.callbacks import RunSummary

    summary = RunSummary(export=False)
    for recall, flops in ((0.5, 10.0), (float("nan"), 20.0), (1.0, 30.0)):
        metrics = {"planted/recall": torch.tensor(recall), "cost/head_flops": torch.tensor(flops),
                   "quadrant/Q3_all": torch.tensor(0.1)}
        summary.on_train_batch_end(SimpleNamespace(callback_metrics=metrics))
    state = summary.state_dict()
    assert state["counts"] == {"planted/recall": 2, "cost/head_flops": 3, "quadrant/Q3_all": 3}
    assert state["sums"]["planted/recall"] == 1.5 and state["sums"]["cost/head_flops"] == 60.0
    resumed = RunSummary(export=False)
    resumed.load_state_dict({"sums": state["sums"], "steps": 3})  # a checkpoint from before per-metric counts
    assert resumed._counts == {k: 3 for k in state["sums"]}
