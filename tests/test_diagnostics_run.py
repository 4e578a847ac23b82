"""Diagnostics during fit (TipDiagnostics) and ``tiplight analyze`` on the saved rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_data, make_module, make_trainer
from lightning.pytorch.loggers import TensorBoardLogger

from tiplight.cli import main as cli_main
from tiplight.diagnostics import TipDiagnostics, read_jsonl
from tiplight.diagnostics import main as analyze_main
from tiplight.selection import SoftOrTopK

SELECTORS = ["SoftOrTopK:0.5", "EntropyTopK:retain=0.5", "OverconfidentTopK:0.2", "AllTokens"]


@pytest.fixture(scope="module")
def run(tiny, prompts_file, tmp_path_factory):
    """A 2-step fit with diagnostics every step and a TensorBoard logger; returns its log directory."""
    root = tmp_path_factory.mktemp("run")
    logger = TensorBoardLogger(str(root), name="opd")
    trainer = make_trainer(root, max_steps=2, logger=logger,
                           callbacks=[TipDiagnostics(every_n_steps=1, max_rollouts=8)])
    module = make_module(tiny, selector=SoftOrTopK(0.5))
    trainer.fit(module, make_data(prompts_file))
    return trainer.log_dir, module


def test_callback_writes_pictures_and_rollouts(run):
    from matplotlib.image import imread

    log_dir, module = run
    out = Path(log_dir) / "diagnostics"
    for step in (1, 2):
        assert (out / f"step_{step}_heatmap.html").read_text().count('class="tok"') > 0
        assert imread(out / f"step_{step}_heatmap.png").shape == (480, 1200, 4)
        assert imread(out / f"step_{step}_histogram.png").shape == (500, 600, 4)
    steps = read_jsonl(out / "rollouts.jsonl")
    assert [s.step for s in steps] == [1, 2] and all(len(s) == 8 for s in steps)
    last = steps[-1]
    record = module.last_step
    label = repr(module.selector)
    assert last.stats.valid.sum() == record.stats.valid.sum()
    assert last.saved_kept[label].sum() == (record.weights > 0).sum()


def test_callback_logs_images_to_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run[0], size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert {"diagnostics/heatmap", "diagnostics/histogram"} <= set(tags)
    assert [e.step for e in events.Images("diagnostics/heatmap")] == [1, 2]


def test_analyze_reports_shares_positions_and_overlap(run, capsys):
    assert analyze_main([run[0], "--json", "--buckets", "4", "--selectors", *SELECTORS]) == 0
    report = json.loads(capsys.readouterr().out)
    label = f"saved:{run[1].selector!r}"
    assert report["rollouts"] == 16 and report["steps"] == [1, 2]
    assert set(report["quadrant_shares"]) == {"all", *SELECTORS, label}
    for shares in report["quadrant_shares"].values():
        assert sum(shares.values()) == pytest.approx(1.0)
    assert report["kept_fraction"]["AllTokens"] == 1.0
    assert 0 < report["kept_fraction"]["OverconfidentTopK:0.2"] < report["kept_fraction"]["SoftOrTopK:0.5"] <= 0.5
    assert sum(b["tokens"] for b in report["by_position"]) == report["tokens"] and len(report["by_position"]) == 4
    overlap = {(r["a"], r["b"]): r["jaccard"] for r in report["overlap"]}
    assert len(overlap) == 5 * 4 // 2
    # the whole step was saved, so recomputing from the raw statistics reproduces the training selection
    assert overlap[("SoftOrTopK:0.5", label)] == pytest.approx(1.0)
    assert overlap[("SoftOrTopK:0.5", "AllTokens")] == pytest.approx(report["kept_fraction"]["SoftOrTopK:0.5"])


def test_analyze_through_the_cli_prints_markdown(run, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["analyze", run[0], "--selectors", "SoftOrTopK:0.5", "EntropyTopK:0.5"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for heading in ("## Quadrant shares", "## Mean statistics by relative position", "## Overlap of kept sets"):
        assert heading in out
    assert "| SoftOrTopK:0.5 | EntropyTopK:0.5 |" in out


@pytest.mark.parametrize(("args", "message"), [
    (["missing_dir"], "does not exist"),
    (["empty_dir"], "has no diagnostics rollouts"),
    (["run_without_diagnostics_dir"], "has no diagnostics rollouts"),  # not its evals/*.jsonl
    (["foreign.jsonl"], "it is not a tiplight rollouts file"),
    (["RUN", "--selectors", "NoSuchTopK:0.5"], "Unknown selector 'NoSuchTopK'"),
    (["RUN", "--selectors", "SoftOrTopK:half"], "not a retain fraction"),
    (["RUN", "--selectors", "SoftOrTopK:1.5"], "retain=1.5 is invalid"),
])
def test_analyze_bad_input_is_one_clear_error(run, tmp_path, capsys, args, message):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "run_without_diagnostics_dir" / "evals").mkdir(parents=True)
    (tmp_path / "run_without_diagnostics_dir" / "evals" / "fit_end_toy.jsonl").write_text('{"index": 0}\n')
    (tmp_path / "foreign.jsonl").write_text('{"problem": "1+1"}\n')
    args = [run[0] if a == "RUN" else str(tmp_path / a) if a.endswith(("_dir", ".jsonl")) else a for a in args]
    with pytest.raises(SystemExit) as exit_:
        cli_main(["analyze", *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def digits(prompt: str, tokens: list[str]) -> list[bool]:
    """A stand-in planted-error mask for the tiny run (its tokens are not the toy world's): every digit."""
    return [t.strip().isdigit() for t in tokens]


def test_analyze_reports_planted_error_recall_against_direct_counts(run, capsys):
    from tiplight.diagnostics.analyze import kept_sets, parse_selector

    assert analyze_main([run[0], "--json", "--selectors", "SoftOrTopK:0.5", "AllTokens",
                         "--planted", "test_diagnostics_run.digits"]) == 0
    report = json.loads(capsys.readouterr().out)
    scopes = [s for path in sorted(Path(run[0]).rglob("rollouts.jsonl")) for s in read_jsonl(path)]
    kept = kept_sets(scopes, {"SoftOrTopK:0.5": parse_selector("SoftOrTopK:0.5")}, 0)["SoftOrTopK:0.5"]
    hits = planted = n_kept = valid = 0
    for s, keep in zip(scopes, kept):
        for r, row in enumerate(s.tokens):
            for t, token in enumerate(row):
                if s.stats.valid[r, t]:
                    is_digit = token.strip().isdigit()
                    valid, planted = valid + 1, planted + is_digit
                    n_kept, hits = n_kept + bool(keep[r, t]), hits + (is_digit and bool(keep[r, t]))
    assert planted > 0
    assert report["planted"]["SoftOrTopK:0.5"] == pytest.approx(
        {"recall": hits / planted, "precision": hits / n_kept, "share": planted / valid})
    assert report["planted"]["AllTokens"] == pytest.approx({"recall": 1.0, "precision": planted / valid,
                                                            "share": planted / valid})
    with pytest.raises(SystemExit) as exit_:
        cli_main(["analyze", run[0], "--planted", "test_diagnostics_run.digits"])
    assert exit_.value.code == 0 and "## Planted errors" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli_main(["analyze", run[0], "--planted", "no.such.mask"])
    assert exit_.value.code == 2 and "--planted='no.such.mask' is not an importable function" in capsys.readouterr().err
