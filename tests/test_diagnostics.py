"""Diagnostics API on the toy world: scoring without a Trainer, the token table, pictures, JSONL."""

from __future__ import annotations

import dataclasses
import sys
from html.parser import HTMLParser

import pytest
import torch

from tiplight import toy
from tiplight.diagnostics import COLUMNS, Scorer, heatmap_html, heatmap_png, histogram, read_jsonl
from tiplight.rollout import Sampling
from tiplight.selection import EntropySampling, EntropyTopK, OverconfidentTopK, SoftOrTopK, quadrants

SELECTORS = [SoftOrTopK(0.5), EntropyTopK(0.5), OverconfidentTopK(0.2), EntropySampling(0.3, importance_weights=True)]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(toy.teacher_dir(), toy.student_dir())


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [p["prompt"] for p in toy.load_problems("test", 4)]


@pytest.fixture(scope="module")
def scored(scorer, prompts):
    return scorer.rollout(prompts, Sampling(max_new_tokens=32), seed=0)


def test_rollout_is_scored_on_completion_tokens(scored, prompts):
    s = scored.stats
    assert len(scored) == 4 and scored.prompts == prompts
    assert s.valid.shape == scored.token_ids.shape and s.valid.any(1).all()
    assert (s.rkl[s.valid] >= 0).all() and (s.fkl[s.valid] >= 0).all()
    assert ((s.entropy[s.valid] >= 0) & (s.entropy[s.valid] <= 1)).all()
    assert all(len(row) == s.valid.shape[1] for row in scored.tokens)


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: type(s).__name__)
def test_table_kept_column_matches_the_selector_mask(scored, selector):
    df = scored.table(selector, seed=3)
    keep = selector.select(scored.stats, generator=torch.Generator().manual_seed(3))
    valid = scored.stats.valid
    assert list(df.columns) == list(COLUMNS) and len(df) == int(valid.sum())
    assert df["kept"].tolist() == (keep[valid] > 0).tolist()
    assert df["weight"].tolist() == pytest.approx(keep.float()[valid].tolist())
    names = quadrants(scored.stats)[valid].tolist()
    assert df["quadrant"].tolist() == [f"Q{i}" for i in names]
    assert df["token"].tolist() == [scored.tokens[r][t] for r, t in valid.nonzero().tolist()]


def test_table_without_pandas_is_a_list_of_records(scored, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    rows = scored.table(SoftOrTopK(0.5))
    assert isinstance(rows, list) and set(rows[0]) == set(COLUMNS)
    assert sum(r["kept"] for r in rows) == int(scored.select(SoftOrTopK(0.5)).bool().sum())


def test_given_texts_score_as_the_same_rollout(scorer, scored, prompts):
    again = scorer.score_texts(prompts, scored.completions)  # completions end with the EOS text
    assert torch.equal(again.stats.valid, scored.stats.valid)
    assert torch.equal(again.token_ids[again.stats.valid], scored.token_ids[scored.stats.valid])
    for name in ("entropy", "rkl", "fkl", "entropy_hat", "rkl_hat"):
        torch.testing.assert_close(getattr(again.stats, name), getattr(scored.stats, name), atol=1e-5, rtol=1e-4)


class Spans(HTMLParser):
    """Collects the token spans of a heatmap: attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self.inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "tok":
            self.spans.append({**attrs, "text": ""})
            self.inside = True

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.spans[-1]["text"] += data


@pytest.mark.parametrize("color_by", ["quadrant", "rkl"])
def test_html_holds_every_token_once_with_its_quadrant(scored, color_by):
    selector = SoftOrTopK(0.5)
    keep, q = scored.select(selector) > 0, quadrants(scored.stats)
    for r in range(len(scored)):
        parser = Spans()
        parser.feed(heatmap_html(scored, r, selector, color_by=color_by))
        positions = scored.stats.valid[r].nonzero().squeeze(1).tolist()
        assert [int(s["data-position"]) for s in parser.spans] == positions
        assert [s["data-quadrant"] for s in parser.spans] == [f"Q{int(q[r, t])}" for t in positions]
        assert [s["data-kept"] == "1" for s in parser.spans] == keep[r, positions].tolist()
        assert [s["text"] for s in parser.spans] == [scored.tokens[r][t] for t in positions]


def test_html_escapes_model_text(scored):
    evil = '<script>alert("x")</script>&'
    tokens = [[evil if tok else tok for tok in row] for row in scored.tokens]
    page = heatmap_html(dataclasses.replace(scored, tokens=tokens, prompts=[evil] * len(scored)), 0)
    assert "<script>" not in page
    parser = Spans()
    parser.feed(page)
    assert parser.spans and all(s["text"] == evil for s in parser.spans)


def test_pngs_open_with_the_documented_size(scored, tmp_path):
    from matplotlib.image import imread

    heatmap_png(scored, tmp_path / "heatmap.png", 1, SoftOrTopK(0.5))
    heatmap_png(scored, tmp_path / "entropy.png", 0, color_by="entropy", figsize=(8, 3), dpi=50)
    histogram(scored, tmp_path / "histogram.png", OverconfidentTopK(0.2))
    assert imread(tmp_path / "heatmap.png").shape == (480, 1200, 4)
    assert imread(tmp_path / "entropy.png").shape == (150, 400, 4)
    assert imread(tmp_path / "histogram.png").shape == (500, 600, 4)


def test_jsonl_round_trip_keeps_statistics_and_selections(scored, tmp_path):
    path = scored.to_jsonl(tmp_path / "rollouts.jsonl", {"soft": SoftOrTopK(0.5)})
    (back,) = read_jsonl(path)
    assert torch.equal(back.stats.valid, scored.stats.valid) and back.completions == scored.completions
    torch.testing.assert_close(back.stats.rkl_hat, scored.stats.rkl_hat, atol=1e-5, rtol=0)
    assert torch.equal(back.saved_kept["soft"], scored.select(SoftOrTopK(0.5)) > 0)
    assert torch.equal(back.select(OverconfidentTopK(0.2)), scored.select(OverconfidentTopK(0.2)))


def test_bad_input_is_one_clear_error(scorer, scored, prompts):
    with pytest.raises(ValueError, match="tokenizer is not set"):
        Scorer(scorer.teacher, scorer.student)
    with pytest.raises(ValueError, match="one completion per prompt"):
        scorer.score_texts(prompts, ["1"])
    with pytest.raises(ValueError, match="color_by='loss'"):
        heatmap_html(scored, 0, color_by="loss")
    with pytest.raises(ValueError, match="must match"):
        scored.table(torch.ones(2, 2))
