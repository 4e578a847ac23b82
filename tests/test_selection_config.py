"""Selector fragments and plugins parse and build through jsonargparse, as LightningCLI does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from plugin_example import LinearMixTopK

from tiplight.selection import (
    AllTokens,
    DivergenceTopK,
    EntropySampling,
    EntropyTopK,
    OverconfidentTopK,
    RandomTokens,
    Selector,
    SoftOrTopK,
    UnionSelector,
)

FRAGMENTS = Path(__file__).resolve().parents[1] / "configs" / "selection"
EXPECTED = {  # file -> (class, retain, extra attributes)
    "all_tokens.yaml": (AllTokens, None, {}),
    "entropy_sampling_50.yaml": (EntropySampling, 0.5, {"importance_weights": False}),
    "entropy_sampling_20.yaml": (EntropySampling, 0.2, {}),
    "entropy_sampling_10.yaml": (EntropySampling, 0.1, {}),
    "soft_or_50.yaml": (SoftOrTopK, 0.5, {"lowest": False}),
    "soft_or_20.yaml": (SoftOrTopK, 0.2, {"lowest": False}),
    "soft_or_bottom_50.yaml": (SoftOrTopK, 0.5, {"lowest": True}),
    "q3_only_20.yaml": (OverconfidentTopK, 0.2, {}),
    "q3_only_10.yaml": (OverconfidentTopK, 0.1, {}),
    "div_only_50.yaml": (DivergenceTopK, 0.5, {}),
    "div_only_10.yaml": (DivergenceTopK, 0.1, {}),
    "entropy_topk_10.yaml": (EntropyTopK, 0.1, {}),
    "random_50.yaml": (RandomTokens, 0.5, {}),
    "entropy_20_or_q3_10.yaml": (UnionSelector, None, {}),
}


class Model:
    """Stands in for the LightningModule: its init argument is `selector: Selector`."""

    def __init__(self, selector: Selector | None = None) -> None:
        self.selector = selector


def build_from(config: str | dict) -> Selector:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Model, "model")
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    return parser.instantiate_classes(parser.parse_string(text)).model.selector


def test_every_fragment_is_listed():
    assert sorted(p.name for p in FRAGMENTS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fragment_builds_the_paper_setting(name):
    cls, retain, attributes = EXPECTED[name]
    selector = build_from((FRAGMENTS / name).read_text())
    assert type(selector) is cls
    assert getattr(selector, "retain", None) == retain
    assert {k: getattr(selector, k) for k in attributes} == attributes


def test_union_fragment_builds_its_members():
    members = build_from((FRAGMENTS / "entropy_20_or_q3_10.yaml").read_text()).selectors
    assert [(type(s), s.retain) for s in members] == [(EntropyTopK, 0.2), (OverconfidentTopK, 0.1)]


@pytest.mark.parametrize("class_path", ["plugin_example.LinearMixTopK", "LinearMixTopK"])
def test_third_party_selector_builds_from_yaml_by_dotted_path_or_short_name(class_path):
    config = {"model": {"selector": {"class_path": class_path, "init_args": {"retain": 0.2, "alpha": 0.3}}}}
    selector = build_from(config)
    assert isinstance(selector, LinearMixTopK) and (selector.retain, selector.alpha) == (0.2, 0.3)


def test_bad_value_in_yaml_fails_while_building():
    config = {
        "model": {"selector": {"class_path": "tiplight.selection.SoftOrTopK", "init_args": {"retain": 2}}}
    }
    with pytest.raises(ValueError, match="retain=2"):
        build_from(config)
