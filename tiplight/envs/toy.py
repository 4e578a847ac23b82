"""``ToyLookup``: an agentic toy task that cannot be solved without its tool.

A shop lists a few items whose prices are hidden; the student has a budget and must name the dearest item
it can afford. Prices come only from the ``price`` tool, and the answer is checked exactly against the
problem's own table, so a score is never a guess about the model's text. Problems are generated from a
seed; train and test come from separate streams and never share a problem.
"""

from __future__ import annotations

import random
from typing import Any

from tiplight.envs.base import Environment, Episode, Split, register_environment
from tiplight.envs.tools import Tool

ITEMS = ("apple", "book", "cup", "desk", "fan", "hat", "kite", "lamp", "mug", "pen", "rug", "sock", "tent", "vase")
SYSTEM = ("you shop for the user. prices are hidden: call the price tool for each item you consider. "
          "answer with the item name only.")
PRICE_PARAMETERS = {"type": "object", "properties": {"item": {"type": "string", "description": "an item of the shop"}},
                    "required": ["item"]}


@register_environment
class ToyLookup(Environment):
    """Name the dearest item within budget; prices only through the ``price(item)`` tool. Score 1 or 0.

    Args:
        items_per_problem: how many items the shop lists, 2 to 14.
        max_price: prices are distinct integers in [1, max_price].
        train_size: problems in the train split.
        test_size: problems in the test split (none of them also in train).
        seed: seeds the problem generator (the same seed gives the same problems).
        named_prices: the tool answers ``"<item> <price>"`` instead of the bare price (the embedded agent
            world's models read the item beside its price).
        max_turns: see ``Environment``.
        max_tokens: see ``Environment``.
        tool_timeout: see ``Environment``.
    """

    def __init__(self, items_per_problem: int = 3, max_price: int = 50, train_size: int = 1000, test_size: int = 200,
                 seed: int = 0, named_prices: bool = False, max_turns: int = 6, max_tokens: int = 512,
                 tool_timeout: float = 5.0) -> None:
        super().__init__(max_turns, max_tokens, tool_timeout)
        if not 2 <= items_per_problem <= len(ITEMS):
            raise ValueError(f"items_per_problem={items_per_problem!r} is invalid; use 2 to {len(ITEMS)}.")
        if max_price < items_per_problem:
            raise ValueError(f"max_price={max_price!r} is invalid; it must be at least items_per_problem "
                             f"({items_per_problem}), as prices within a problem differ.")
        self.items_per_problem, self.max_price = items_per_problem, max_price
        self.train_size, self.test_size, self.seed, self.named_prices = train_size, test_size, seed, named_prices

    def problems(self, split: Split) -> list[dict[str, Any]]:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is invalid; use 'train' or 'test'.")
        train = self._generate("train", self.train_size, set())
        if split == "train":
            return train
        return self._generate("test", self.test_size, {p["key"] for p in train})

    def _generate(self, split: Split, n: int, exclude: set[str]) -> list[dict[str, Any]]:
        rng, problems = random.Random(f"{self.seed}-{split}"), []
        while len(problems) < n:
            problem = self._problem(rng)
            if problem["key"] not in exclude:
                exclude.add(problem["key"])
                problems.append({**problem, "id": f"lookup-{split}-{len(problems)}"})
        return problems

    def _problem(self, rng: random.Random) -> dict[str, Any]:
        items = sorted(rng.sample(ITEMS, self.items_per_problem))
        prices = dict(zip(items, rng.sample(range(1, self.max_price + 1), len(items))))  # distinct: one answer
        budget = rng.randint(min(prices.values()), self.max_price)  # at least one item is affordable
        answer = max((p, item) for item, p in prices.items() if p <= budget)[1]
        key = ",".join(f"{i}={prices[i]}" for i in items) + f";{budget}"
        prompt = f"budget {budget}. items: {', '.join(items)}. which is the dearest item you can afford?"
        return {"key": key, "prompt": prompt, "prices": prices, "budget": budget, "answer": answer}

    def initial_messages(self, problem: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem["prompt"]}]

    def tools(self, problem: dict[str, Any]) -> dict[str, Tool]:
        prices: dict[str, int] = problem["prices"]

        def price(item: str) -> str:
            if item not in prices:
                return f"no item {item!r} in this shop."
            return f"{item} {prices[item]}" if self.named_prices else str(prices[item])

        return {"price": Tool("price", "the price of one item of the shop", PRICE_PARAMETERS, price)}

    def score(self, episode: Episode) -> float:
        if episode.end != "answer":
            return 0.0
        return float(episode.last_text.strip(" .").lower() == episode.problem["answer"])
