"""The environment registry (strict, keyed by class name) and building environments from YAML."""

from __future__ import annotations

import pytest
import yaml
from jsonargparse import ArgumentParser

from tiplight.envs import Environment, ToyLookup, get_environment, list_environments, register_environment
from tiplight.envs import base as envs_base


class Holder:
    """Stands in for the LightningModule or data module: its init argument is ``env: Environment``."""

    def __init__(self, env: Environment | None = None) -> None:
        self.env = env


def build_from(config: dict) -> Environment:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Holder, "holder")
    return parser.instantiate_classes(parser.parse_string(yaml.safe_dump({"holder": config}))).holder.env


@pytest.mark.parametrize("class_path", ["ToyLookup", "tiplight.envs.ToyLookup", "tiplight.envs.toy.ToyLookup"])
def test_yaml_class_path_builds_the_environment_with_its_arguments(class_path):
    env = build_from({"env": {"class_path": class_path, "init_args": {"items_per_problem": 4, "max_turns": 3}}})
    assert isinstance(env, ToyLookup) and env.items_per_problem == 4 and env.max_turns == 3


def test_yaml_rejects_a_mistyped_argument():
    with pytest.raises(Exception, match="max_turns"):
        build_from({"env": {"class_path": "ToyLookup", "init_args": {"max_turns": "many"}}})


def test_registry_is_strict():
    assert "ToyLookup" in list_environments()
    assert isinstance(get_environment("ToyLookup", seed=3), ToyLookup)
    with pytest.raises(ValueError, match=r"Unknown environment 'Nope'; registered environments: .*ToyLookup"):
        get_environment("Nope")
    register_environment(ToyLookup)  # the same class again (a re-import) is fine
    clash = type("ToyLookup", (ToyLookup,), {"__module__": "somewhere.else"})
    with pytest.raises(ValueError, match="already registered"):
        register_environment(clash)
    with pytest.raises(TypeError, match="Environment subclass"):
        register_environment(dict)
    assert envs_base._REGISTRY.get("ToyLookup") is ToyLookup


@pytest.mark.parametrize("kwargs, says", [
    ({"max_turns": 0}, "max_turns=0"), ({"max_tokens": 1}, "max_tokens=1"), ({"tool_timeout": 0}, "tool_timeout=0"),
    ({"items_per_problem": 1}, "items_per_problem=1"), ({"max_price": 2}, "max_price=2"),
])
def test_bad_arguments_are_one_sentence(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ToyLookup(**kwargs)


def test_toy_problems_are_seeded_and_splits_disjoint():
    env = ToyLookup(train_size=300, test_size=100)
    train, test = env.problems("train"), env.problems("test")
    assert train == ToyLookup(train_size=300, test_size=100).problems("train")
    assert train != ToyLookup(train_size=300, seed=1).problems("train")
    assert not {p["key"] for p in train} & {p["key"] for p in test}
    assert len({p["id"] for p in test}) == 100
    for p in test:
        affordable = {i: c for i, c in p["prices"].items() if c <= p["budget"]}
        assert p["answer"] == max(affordable, key=affordable.get) and len(set(p["prices"].values())) == 3
    with pytest.raises(ValueError, match="split='val'"):
        env.problems("val")
