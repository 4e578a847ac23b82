"""``DeepPlanningTravel``: the DeepPlanning travel-planning benchmark as an environment, its hard-constraint
score (Avg@k / Best@k over it: ``tiplight.envs.metrics``).

The benchmark's folder (``travelplanning/`` of QwenLM/Qwen-Agent's ``benchmark/deepplanning``) gives the
tasks (``data/travelplanning_query_<lang>.json``: ``id``, ``query``, ``meta_info`` with ``people_number``,
``room_number`` and ``hard_constraints``), the tool schemas (``tools/tool_schema_<lang>.json``) and, once
downloaded, the databases (``database/database_<lang>/id_<id>/``). The benchmark has an LLM convert a
Markdown plan to JSON before checking it; here the student writes that JSON itself, inside
``<plan></plan>``, so the score needs no second model. A hard constraint names the flight or train
numbers, hotel, restaurant or attractions the plan must contain, or a budget its costs must stay within;
the score is the fraction satisfied (TIP Table 7), or with ``score="all"`` the benchmark's all-or-nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from tiplight.envs.base import Environment, Episode, Split, register_environment
from tiplight.envs.tools import Tool
from tiplight.envs.travel_db import check_task_database, read_tool_schemas, travel_tools

Language = Literal["en", "zh"]
FLIGHT, TRAIN = {"flight", "飞机", "airplane", "plane"}, {"train", "火车", "railway", "高铁", "gaotie"}
SYSTEM = (
    "You are a travel planner. Use the tools to look up every transport, hotel, restaurant and attraction you "
    "use; never invent names, numbers or prices. When you have gathered enough, answer with the plan as JSON "
    "inside <plan></plan>: {\"daily_plans\": [{\"day_number\": 1, \"current_city\": \"...\", \"accommodation\": "
    "{\"name\": \"...\", \"price_per_night\": 0}, \"activities\": [{\"time_slot\": \"HH:MM-HH:MM\", \"type\": "
    "\"travel_intercity_public | travel_city | attraction | meal | hotel | buffer\", \"details\": {...}}]}]}. "
    "details: travel_intercity_public {mode: flight/train, number, from, to, cost}; travel_city {from, to, "
    "distance, duration, cost}; attraction {name, city, cost}; meal {meal_type, name, cost}; hotel {activity, "
    "name}; buffer {description}. Costs are per person, except hotels (per room and night) and taxis (per car)."
)


@register_environment
class DeepPlanningTravel(Environment):
    """DeepPlanning travel planning over the benchmark's tasks, tools and databases.

    Args:
        root: the benchmark's ``travelplanning`` folder (holding ``data/``, ``tools/`` and ``database/``).
        language: which language's tasks, tool schemas and database to use.
        query_field: the task text: ``query`` (the user's words) or ``query_with_constraints`` (a list).
        test_fraction: share of tasks held out for the test split (the paper trains on 80%).
        split_seed: seeds the train/test split of the task ids.
        score: ``fraction`` of hard constraints satisfied (the paper's) or ``all`` (1 only if every one is).
        max_turns: see ``Environment`` (the benchmark allows up to 400 model calls).
        max_tokens: see ``Environment``.
        tool_timeout: see ``Environment``.
    """

    def __init__(self, root: str, language: Language = "en",
                 query_field: Literal["query", "query_with_constraints"] = "query", test_fraction: float = 0.2,
                 split_seed: int = 0, score: Literal["fraction", "all"] = "fraction", max_turns: int = 60,
                 max_tokens: int = 32768, tool_timeout: float = 10.0) -> None:
        super().__init__(max_turns, max_tokens, tool_timeout)
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction={test_fraction!r} is invalid; it must lie in [0, 1).")
        self.root, self.language, self.query_field = root, language, query_field
        self.test_fraction, self.split_seed, self.score_rule = test_fraction, split_seed, score
        base = Path(root)
        self._tasks = read_tasks(base / "data" / f"travelplanning_query_{language}.json")
        self._schemas = read_tool_schemas(base / "tools" / f"tool_schema_{language}.json")
        self._database = base / "database" / f"database_{language}"
        for task in self._tasks:
            check_task_database(self._database / f"id_{task['id']}")

    def problems(self, split: Split) -> list[dict[str, Any]]:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is invalid; use 'train' or 'test'.")
        ids = sorted(t["id"] for t in self._tasks)
        random.Random(self.split_seed).shuffle(ids)
        test = set(ids[: round(self.test_fraction * len(ids))])
        return [t for t in self._tasks if (t["id"] in test) == (split == "test")]

    def initial_messages(self, problem: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem[self.query_field]}]

    def tools(self, problem: dict[str, Any]) -> dict[str, Tool]:
        return travel_tools(self._database / f"id_{problem['id']}", self._schemas)

    def score(self, episode: Episode) -> float:
        plan = extract_plan(episode.last_text) if episode.end == "answer" else None
        results = hard_constraints(plan, episode.problem["meta_info"]) if plan is not None else None
        if not results:
            return 0.0
        if self.score_rule == "all":
            return float(all(results.values()))
        return sum(results.values()) / len(results)


def read_tasks(path: Path) -> list[dict[str, Any]]:
    """The benchmark's query file; one sentence when it is missing or not a list of tasks."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(tasks, list) and tasks and all(
            "id" in t and "query" in t and isinstance(t["meta_info"]["hard_constraints"], dict) for t in tasks)
    except (OSError, ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ValueError(f"DeepPlanning query file {path} could not be read; expected the benchmark's JSON list "
                         "of tasks with id, query and meta_info.hard_constraints.")
    return [{**t, "id": str(t["id"])} for t in tasks]


def extract_plan(text: str) -> dict[str, Any] | None:
    """The JSON object inside the last ``<plan></plan>`` of ``text``, or None."""
    end = text.rfind("</plan>")
    start = text.rfind("<plan>", 0, end if end >= 0 else None)
    if start < 0 or end < 0:
        return None
    try:
        plan = json.loads(text[start + len("<plan>"): end])
    except (ValueError, RecursionError):
        return None
    return plan if isinstance(plan, dict) else None


def _days(plan: dict[str, Any]) -> list[dict[str, Any]]:
    days = plan.get("daily_plans")
    return [d for d in days if isinstance(d, dict)] if isinstance(days, list) else []


def _details(day: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The ``details`` of a day's activities of type ``kind``."""
    acts = day.get("activities") if isinstance(day.get("activities"), list) else []
    found = [a.get("details") or {} for a in acts if isinstance(a, dict) and a.get("type") == kind]
    return [d for d in found if isinstance(d, dict)]


def _activities(plan: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for day in _days(plan) for d in _details(day, kind)]


def _names(plan: dict[str, Any], category: str) -> set[str]:
    if category in ("flight", "train"):
        modes = FLIGHT if category == "flight" else TRAIN
        return {str(d.get("number", "")) for d in _activities(plan, "travel_intercity_public")
                if str(d.get("mode", "")).lower() in modes}
    if category == "hotel":
        return {str(d["accommodation"].get("name", "")) for d in _days(plan) if isinstance(d.get("accommodation"), dict)}
    kind = {"restaurant": "meal", "attraction": "attraction"}[category]
    return {str(d.get("name", "")) for d in _activities(plan, kind)}


def _required(category: str, constraint: dict[str, Any]) -> list[str]:
    if category in ("flight", "train"):
        return [constraint[f"{way}_{category}_no"] for way in ("outbound", "inbound")
                if f"{way}_{category}_no" in constraint]
    if category == "attraction":
        return list(constraint.get("attraction_names") or [])
    name = constraint.get(f"{category}_name")
    return [name] if name else []


def hard_constraints(plan: dict[str, Any], meta: dict[str, Any]) -> dict[str, bool]:
    """Each known hard constraint of ``meta`` -> satisfied by ``plan``; unknown kinds are left out, as the
    benchmark leaves them out. A constraint that names nothing is unsatisfied."""
    results = {}
    for key, constraint in meta.get("hard_constraints", {}).items():
        category = key.split("_")[0]
        if key == "budget_constraint":
            limit = _number(constraint.get("max_budget"))
            results[key] = limit is not None and bool(_days(plan)) and plan_cost(plan, meta) <= limit
        elif category in ("flight", "train", "hotel", "restaurant", "attraction"):
            required = _required(category, constraint)
            results[key] = bool(required) and set(required) <= _names(plan, category)
    return results


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _cost(details: dict[str, Any]) -> float:
    return (_number(details.get("cost")) or 0.0) if details.get("cost") else 0.0


def plan_cost(plan: dict[str, Any], meta: dict[str, Any]) -> float:
    """The trip's total cost as the benchmark counts it: each day's first priced intercity fare per person,
    hotel nights (all days but the last) per room, meals and tickets per person, taxis per car of four."""
    people, rooms = int(meta.get("people_number", 1)), int(meta.get("room_number", 1))
    days, total = _days(plan), 0.0
    for i, day in enumerate(days):
        fares = [f for f in (_number(d.get("cost", 0)) for d in _details(day, "travel_intercity_public"))
                 if f is not None]
        total += (fares[0] if fares else 0.0) * people  # a transfer repeats the whole fare on each leg
        total += sum(_cost(d) for d in _details(day, "meal") + _details(day, "attraction")) * people
        total += sum(_cost(d) for d in _details(day, "travel_city")) * max(1, (people + 3) // 4)
        stay = day.get("accommodation")
        if i < len(days) - 1 and isinstance(stay, dict):
            price = stay.get("price") or stay.get("price_per_night") or stay.get("cost")
            total += (_number(price) or 0.0) * rooms
    return total
