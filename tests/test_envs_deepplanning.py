"""DeepPlanning travel planning on a synthetic database in the benchmark's layout: start-up checks, the
tools, the hard-constraint score, Avg@k / Best@k, and a scripted episode through the loop."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from agent_fixtures import EOS, Scripted, call, tool_tokenizer
from deepplanning_fixture import good_plan, write_benchmark

from tiplight.envs import DeepPlanningTravel, Episode, avg_at_k, best_at_k, hard_constraints, run_episodes
from tiplight.envs.deepplanning import extract_plan, plan_cost


@pytest.fixture
def root(tmp_path):
    return write_benchmark(tmp_path / "travelplanning")


def episode(env, task_id: str, answer: str, end="answer") -> Episode:
    problem = next(p for p in env.problems("train") + env.problems("test") if p["id"] == task_id)
    return Episode(problem, [{"role": "assistant", "content": answer}], turns=1, end=end)


def plan_text(plan) -> str:
    return f"<think>done</think>here is the plan <plan>{json.dumps(plan)}</plan>"


def test_splits_partition_the_tasks_by_a_seed(root):
    env = DeepPlanningTravel(str(root), test_fraction=0.5)
    train, test = env.problems("train"), env.problems("test")
    assert len(train) == len(test) == 1 and {p["id"] for p in train + test} == {"0", "1"}
    assert env.problems("test") == DeepPlanningTravel(str(root), test_fraction=0.5).problems("test")
    assert len(DeepPlanningTravel(str(root), test_fraction=0.0).problems("train")) == 2
    messages = env.initial_messages(train[0])
    assert messages[0]["role"] == "system" and "<plan>" in messages[0]["content"]
    assert messages[1]["content"] == train[0]["query"]
    with_list = DeepPlanningTravel(str(root), query_field="query_with_constraints")
    assert with_list.initial_messages(train[0])[1]["content"] == train[0]["query_with_constraints"]


def test_tools_answer_from_the_tasks_database(root):
    env = DeepPlanningTravel(str(root))
    tools = env.tools({"id": "0"})
    assert sorted(tools) == sorted(s["function"]["name"] for s in env.tool_schemas({"id": "0"}))
    trains = json.loads(tools["query_train_info"].fn(origin="Alpha", destination="Beta", depDate="2025-11-12"))
    assert [t["train_no"] for t in trains] == ["G1", "G2"] and trains[1]["price"] == "90.0"
    assert tools["query_train_info"].fn(origin="Beta", destination="Gamma", depDate="2025-11-12").startswith("No train")
    assert [h["name"] for h in json.loads(tools["query_hotel_info"].fn("Beta", "d1", "d2", hotelStar="3"))] == ["Star Inn"]
    assert json.loads(tools["search_location"].fn("Old Wall"))[0]["latitude"] == "31.000000"
    near = json.loads(tools["recommend_restaurants"].fn("31.000000", "118.000000"))
    assert [r["restaurant_name"] for r in near] == ["Pine House", "Duck Place"]
    route = json.loads(tools["query_road_route_info"].fn("31.000000,118.000000", "31.100000,118.100000"))
    assert route[0]["cost"] == "20"
    assert json.loads(tools["recommend_attractions"].fn("Beta", attraction_type="Natural Scenery"))[0][
        "attraction_name"] == "Lake Park"


def test_tool_calls_run_through_execute_with_schema_checks(root):
    env = DeepPlanningTravel(str(root))
    (ep,) = [episode(env, "0", "")]
    text = call("query_train_info", origin="Alpha", destination="Beta", depDate="2025-11-12") + call(
        "query_hotel_info", destination="Beta") + call("book_hotel", hotel="x")
    (messages,) = env.execute([ep], [text])
    assert '"train_no": "G1"' in messages[0]["content"]
    assert messages[1]["content"] == "error: query_hotel_info is missing required argument(s) checkinDate, checkoutDate."
    assert messages[2]["content"].startswith("error: unknown tool 'book_hotel'; available tools: query_attraction")


def test_hard_constraint_score_is_the_fraction_satisfied(root):
    env = DeepPlanningTravel(str(root))
    assert plan_cost(good_plan(), {"people_number": 2, "room_number": 1}) == 820.0
    assert env.score(episode(env, "0", plan_text(good_plan()))) == 1.0
    missing_park = good_plan()
    del missing_park["daily_plans"][1]["activities"][0]
    assert env.score(episode(env, "0", plan_text(missing_park))) == pytest.approx(4 / 5)
    dear = good_plan()
    dear["daily_plans"][0]["activities"][3]["details"]["cost"] = 800  # meals x 2 people: 1620 + 820 - 100
    results = hard_constraints(dear, episode(env, "0", "").problem["meta_info"])
    assert results["budget_constraint"] is False and sum(results.values()) == 4
    flight = good_plan()
    flight["daily_plans"][0]["activities"][0]["details"]["mode"] = "flight"
    assert env.score(episode(env, "0", plan_text(flight))) == pytest.approx(4 / 5)  # G2 is not a train now
    strict = DeepPlanningTravel(str(root), score="all")
    assert strict.score(episode(strict, "0", plan_text(missing_park))) == 0.0
    assert strict.score(episode(strict, "0", plan_text(good_plan()))) == 1.0


def test_unknown_constraint_kinds_are_left_out_and_bad_plans_score_zero(root):
    env = DeepPlanningTravel(str(root))
    assert env.score(episode(env, "1", plan_text(good_plan()))) == 1.0  # Lake Park; the unknown kind is skipped
    for text in ("", "no plan", "<plan>{not json}</plan>", "<plan>[1]</plan>", "<plan>{}</plan>",
                 plan_text({"daily_plans": "x"})):
        assert env.score(episode(env, "0", text)) == 0.0
    assert env.score(episode(env, "0", plan_text(good_plan()), end="max_turns")) == 0.0
    assert extract_plan("<plan>{\"a\": 1}</plan> then <plan>{\"b\": 2}</plan>") == {"b": 2}


def test_avg_and_best_at_k():
    scores = torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.2, 0.2]])
    assert avg_at_k(scores) == pytest.approx(0.35)
    assert best_at_k(scores) == pytest.approx(0.6)


@pytest.mark.parametrize("damage, says", [
    (lambda r: shutil.rmtree(r), "query file .*travelplanning_query_en.json could not be read"),
    (lambda r: (r / "data/travelplanning_query_en.json").write_text("[{\"id\": 1}]"), "could not be read"),
    (lambda r: (r / "tools/tool_schema_en.json").write_text("{"), "tool schema file .*tool_schema_en.json"),
    (lambda r: (r / "tools/tool_schema_en.json").write_text("[]"), "lacks the tool\\(s\\) query_train_info"),
    (lambda r: shutil.rmtree(r / "database/database_en/id_1"), "database folder .*id_1 does not exist"),
    (lambda r: (r / "database/database_en/id_0/hotels/hotels.csv").unlink(), "hotels.csv is missing"),
    (lambda r: (r / "database/database_en/id_0/restaurants/restaurants.csv").write_text("restaurant_name\n"),
     "lacks column\\(s\\) query_latitude, query_longitude; its header is restaurant_name"),
    (lambda r: (r / "database/database_en/id_0/locations/locations_coords.csv").write_text("latitude,longitude\n"),
     "lacks column\\(s\\) poi_name or place_name"),
])
def test_a_missing_or_malformed_database_is_one_sentence_at_start_up(root, damage, says):
    damage(root)
    with pytest.raises(ValueError, match=says):
        DeepPlanningTravel(str(root))


def test_a_scripted_planner_scores_through_the_loop(root, tmp_path):
    tokenizer = tool_tokenizer(tmp_path / "tok")
    env = DeepPlanningTravel(str(root), max_tokens=20_000)
    problems = [p for p in env.problems("train") + env.problems("test") if p["id"] == "0"]

    def planner(conversation: str) -> str:
        if "<tool_response>" not in conversation:
            return call("query_train_info", origin="Alpha", destination="Beta", depDate="2025-11-12")
        assert '"train_no": "G2"' in conversation  # the tool's answer came back into the conversation
        return plan_text(good_plan())

    out = run_episodes(Scripted(tokenizer, planner), tokenizer, env, problems, torch.tensor([0]),
                       max_new_tokens=4096, eos_token_ids=[EOS])
    assert out.episodes[0].end == "answer" and out.episodes[0].tool_calls == 1
    assert out.scores(env).tolist() == [1.0]


def test_every_tool_takes_exactly_its_schemas_parameters(root):
    import inspect

    env = DeepPlanningTravel(str(root))
    for name, tool in env.tools({"id": "0"}).items():
        signature = inspect.signature(tool.fn).parameters
        assert set(signature) == set(tool.parameters["properties"]), name
        required = set(tool.parameters["required"])
        assert {p for p, v in signature.items() if v.default is inspect.Parameter.empty} == required, name
