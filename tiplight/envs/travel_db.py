"""DeepPlanning's travel database, in the layout the benchmark ships, and its nine tools over it.

The benchmark (QwenLM/Qwen-Agent, ``benchmark/deepplanning/travelplanning``; databases from the Hugging
Face dataset ``Qwen/DeepPlanning``) keeps one database per task: ``database_<lang>/id_<task id>/`` holds
the CSV files of ``TABLES``. The tools here are tiplight's own implementation of the benchmark's tool
schemas (``tools/tool_schema_<lang>.json``, read from the benchmark's folder): each answers with the
matching rows as JSON, every column the database has, so names and prices come only from the database.
"""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from tiplight.envs.tools import Tool

TABLES: dict[str, tuple[str, ...]] = {  # file -> the columns the tools filter on
    "trains/trains.csv": ("origin_city", "destination_city", "dep_date", "seat_class", "route_index",
                          "segment_index", "train_no", "price"),
    "flights/flights.csv": ("origin_city", "destination_city", "dep_date", "seat_class", "route_index",
                            "segment_index", "flight_no", "price"),
    "hotels/hotels.csv": ("name", "hotel_star", "brand", "price"),
    "attractions/attractions.csv": ("attraction_name", "attraction_type"),
    "locations/locations_coords.csv": ("latitude", "longitude"),
    "transportation/distance_matrix.csv": ("origin", "destination", "distance_meters", "duration_minutes", "cost"),
    "restaurants/restaurants.csv": ("restaurant_name", "query_latitude", "query_longitude"),
}
PLACE_COLUMNS = ("poi_name", "place_name")  # the benchmark's location table names places by either column
TOOL_NAMES = ("query_train_info", "query_flight_info", "query_hotel_info", "query_attraction_details",
              "recommend_attractions", "search_location", "query_road_route_info", "recommend_restaurants",
              "query_restaurant_details")
Row = dict[str, str]


def check_task_database(task_dir: Path) -> None:
    """Raise one sentence naming the first missing file or column of one task's database folder."""
    if not task_dir.is_dir():
        raise ValueError(f"DeepPlanning database folder {task_dir} does not exist; expected one folder "
                         f"id_<task id> per task holding {', '.join(TABLES)}.")
    for name, columns in TABLES.items():
        path = task_dir / name
        if not path.is_file():
            raise ValueError(f"DeepPlanning database file {path} is missing; each task folder holds {', '.join(TABLES)}.")
        with path.open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        missing = [c for c in columns if c not in header]
        if name.startswith("locations") and not set(PLACE_COLUMNS) & set(header):
            missing.append(" or ".join(PLACE_COLUMNS))
        if missing:
            raise ValueError(f"DeepPlanning database file {path} lacks column(s) {', '.join(missing)}; "
                             f"its header is {', '.join(header) or '(empty)'}.")


@lru_cache(maxsize=64)  # a task's tables are read once and shared by its G rollouts
def load_tables(task_dir: Path) -> dict[str, list[Row]]:
    tables = {}
    for name in TABLES:
        with (task_dir / name).open(encoding="utf-8", newline="") as f:
            tables[name.split("/")[0]] = list(csv.DictReader(f))
    return tables


def _select(rows: list[Row], **equal: str | None) -> list[Row]:
    """Rows whose columns equal every given (non-empty) value."""
    wanted = {k: v for k, v in equal.items() if v not in (None, "")}
    return [r for r in rows if all(r.get(k) == v for k, v in wanted.items())]


def _answer(rows: list[Row], what: str) -> str:
    if not rows:
        return f"No {what} found."
    return json.dumps(rows, ensure_ascii=False)


def _routes(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (int(r["route_index"] or 0), int(r["segment_index"] or 0)))


def travel_tools(task_dir: Path, schemas: dict[str, dict[str, Any]]) -> dict[str, Tool]:
    """The nine tools over the database of one task, described by the benchmark's ``schemas`` (by name)."""
    t = load_tables(task_dir)

    def place(row: Row) -> str:
        return next((row[c] for c in PLACE_COLUMNS if c in row), "")

    functions = {
        "query_train_info": lambda origin, destination, depDate, seatClassName=None: _answer(_routes(_select(
            t["trains"], origin_city=origin, destination_city=destination, dep_date=depDate,
            seat_class=seatClassName)), f"train from {origin} to {destination} on {depDate}"),
        "query_flight_info": lambda origin, destination, depDate, seatClassName=None: _answer(_routes(_select(
            t["flights"], origin_city=origin, destination_city=destination, dep_date=depDate,
            seat_class=seatClassName)), f"flight from {origin} to {destination} on {depDate}"),
        "query_hotel_info": lambda destination, checkinDate, checkoutDate, hotelStar=None, hotelBrands=None: _answer(
            _select(t["hotels"], hotel_star=hotelStar, brand=hotelBrands), f"hotel in {destination}"),
        "query_attraction_details": lambda attraction_name: _answer(
            _select(t["attractions"], attraction_name=attraction_name), f"attraction named {attraction_name!r}"),
        "recommend_attractions": lambda city, attraction_type=None: _answer(
            _select(t["attractions"], attraction_type=attraction_type), f"attraction in {city}"),
        "search_location": lambda place_name: _answer(
            [r for r in t["locations"] if place(r) == place_name], f"place named {place_name!r}"),
        "query_road_route_info": lambda origin, destination: _answer(
            _select(t["transportation"], origin=origin, destination=destination), f"route {origin} -> {destination}"),
        "recommend_restaurants": lambda latitude, longitude: _answer(
            _select(t["restaurants"], query_latitude=latitude, query_longitude=longitude),
            f"restaurant near {latitude},{longitude}"),
        "query_restaurant_details": lambda restaurant_name: _answer(
            _select(t["restaurants"], restaurant_name=restaurant_name), f"restaurant named {restaurant_name!r}"),
    }
    return {name: Tool(name, schemas[name].get("description", ""), schemas[name]["parameters"], functions[name])
            for name in TOOL_NAMES}


def read_tool_schemas(path: Path) -> dict[str, dict[str, Any]]:
    """The benchmark's tool schema file (a JSON list of OpenAI functions), by name; one sentence when it is
    missing, malformed or lacks one of the nine tools."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        schemas = {e["function"]["name"]: e["function"] for e in entries}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"DeepPlanning tool schema file {path} could not be read ({type(e).__name__}); expected "
                         "the benchmark's JSON list of {\"type\": \"function\", \"function\": {...}}.") from None
    missing = [n for n in TOOL_NAMES if n not in schemas or "parameters" not in schemas[n]]
    if missing:
        raise ValueError(f"DeepPlanning tool schema file {path} lacks the tool(s) {', '.join(missing)}.")
    return schemas
