"""A small synthetic DeepPlanning travel benchmark in the layout the real one ships (``data/``, ``tools/``,
``database/database_en/id_<id>/<table>/<file>.csv``), with made-up cities, trains, hotels and places."""

from __future__ import annotations

import csv
import json
from pathlib import Path

STRING = {"type": "string"}
PARAMETERS = {  # the benchmark's parameter names; descriptions and data here are synthetic
    "query_train_info": (["origin", "destination", "depDate"], ["seatClassName"]),
    "query_flight_info": (["origin", "destination", "depDate"], ["seatClassName"]),
    "query_hotel_info": (["destination", "checkinDate", "checkoutDate"], ["hotelStar", "hotelBrands"]),
    "query_attraction_details": (["attraction_name"], []),
    "recommend_attractions": (["city"], ["attraction_type"]),
    "search_location": (["place_name"], []),
    "query_road_route_info": (["origin", "destination"], []),
    "recommend_restaurants": (["latitude", "longitude"], []),
    "query_restaurant_details": (["restaurant_name"], []),
}
TRAINS = [  # origin_city, destination_city, dep_date, seat_class, route_index, segment_index, train_no, price
    ("Alpha", "Beta", "2025-11-12", "Second Class Seat", "0", "0", "G1", "120.0"),
    ("Alpha", "Beta", "2025-11-12", "Second Class Seat", "1", "0", "G2", "90.0"),
    ("Beta", "Alpha", "2025-11-13", "Second Class Seat", "0", "0", "G9", "110.0"),
]
HOTELS = [("Star Inn", "3", "Orange", "300"), ("Grand Beta", "5", "Hilton", "900")]
ATTRACTIONS = [("Old Wall", "Historical and Cultural"), ("Lake Park", "Natural Scenery")]
RESTAURANTS = [("Pine House", "31.000000", "118.000000"), ("Duck Place", "31.000000", "118.000000")]
TASKS = [
    {"id": 0, "query": "Plan two days from Alpha to Beta for 2 people by train, budget 2000.",
     "query_with_constraints": "Alpha to Beta, 2 people, train G2 out, G9 back, Star Inn.",
     "meta_info": {"org": "Alpha", "dest": ["Beta"], "days": 2, "people_number": 2, "room_number": 1,
                   "hard_constraints": {
                       "train_cheapest_direct": {"outbound_train_no": "G2", "inbound_train_no": "G9"},
                       "hotel_cheapest_star": {"hotel_name": "Star Inn", "hotel_star": 3},
                       "restaurant_must_eat_named": {"restaurant_name": "Pine House"},
                       "attraction_must_visit_named": {"attraction_names": ["Old Wall", "Lake Park"]},
                       "budget_constraint": {"max_budget": 2000}}}},
    {"id": 1, "query": "One day in Beta.", "query_with_constraints": "One day in Beta, see Lake Park.",
     "meta_info": {"people_number": 1, "room_number": 1,
                   "hard_constraints": {"attraction_must_visit_named": {"attraction_names": ["Lake Park"]},
                                        "some_future_kind": {"x": 1}}}},
]


def write_table(path: Path, header: list[str], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_database(task_dir: Path) -> None:
    route = ["origin_city", "destination_city", "dep_date", "seat_class", "route_index", "segment_index"]
    write_table(task_dir / "trains/trains.csv", [*route, "train_no", "price"], TRAINS)
    write_table(task_dir / "flights/flights.csv", [*route, "flight_no", "price"], [])
    write_table(task_dir / "hotels/hotels.csv", ["name", "hotel_star", "brand", "price"], HOTELS)
    write_table(task_dir / "attractions/attractions.csv", ["attraction_name", "attraction_type"], ATTRACTIONS)
    write_table(task_dir / "locations/locations_coords.csv", ["poi_name", "latitude", "longitude"],
                [("Old Wall", "31.000000", "118.000000")])
    write_table(task_dir / "transportation/distance_matrix.csv",
                ["origin", "destination", "distance_meters", "duration_minutes", "cost"],
                [("31.000000,118.000000", "31.100000,118.100000", "5000", "15", "20")])
    write_table(task_dir / "restaurants/restaurants.csv", ["restaurant_name", "query_latitude", "query_longitude"],
                RESTAURANTS)


def write_benchmark(root: Path) -> Path:
    """``root`` laid out as the benchmark's ``travelplanning`` folder, English only."""
    (root / "data").mkdir(parents=True)
    (root / "data/travelplanning_query_en.json").write_text(json.dumps(TASKS))
    (root / "tools").mkdir()
    schemas = [{"type": "function", "function": {
        "name": name, "description": f"synthetic {name}",
        "parameters": {"type": "object", "properties": {p: STRING for p in required + optional},
                       "required": required}}} for name, (required, optional) in PARAMETERS.items()]
    (root / "tools/tool_schema_en.json").write_text(json.dumps(schemas))
    for task in TASKS:
        write_database(root / "database/database_en" / f"id_{task['id']}")
    return root


def good_plan() -> dict:
    """A plan for task 0 that meets every hard constraint: 2*(90 + 110) + 300 + 2*50 + 2*0 + 20 = 820."""
    return {"daily_plans": [
        {"day_number": 1, "accommodation": {"name": "Star Inn", "price_per_night": 300}, "activities": [
            {"type": "travel_intercity_public", "details": {"mode": "train", "number": "G2", "cost": 90}},
            {"type": "travel_city", "details": {"from": "a", "to": "b", "cost": 20}},
            {"type": "attraction", "details": {"name": "Old Wall", "cost": 0}},
            {"type": "meal", "details": {"meal_type": "dinner", "name": "Pine House", "cost": 50}}]},
        {"day_number": 2, "accommodation": {"name": "Star Inn", "price_per_night": 300}, "activities": [
            {"type": "attraction", "details": {"name": "Lake Park", "cost": "0"}},
            {"type": "travel_intercity_public", "details": {"mode": "Train", "number": "G9", "cost": 110}}]},
    ]}
