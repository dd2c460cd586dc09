"""Declared feedback names: from a config file or over the API, enforced on what arrives, queryable from SQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from .conftest import make_server, sql

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def _annotate(http: httpx.Client, name: str, **fields: object) -> httpx.Response:
    return http.post("/v1/feedback", json={"records": [{"trace_id": TRACE, "span_id": SPAN, "name": name, **fields}]})


def test_a_config_file_declares_names_that_validate_and_show_in_sql(tmp_path: Path) -> None:
    cfg = tmp_path / "feedback.json"
    cfg.write_text(
        orjson.dumps(
            {
                "feedback": [
                    {"name": "correctness", "type": "categorical", "labels": ["correct", "incorrect"]},
                    {"name": "helpfulness", "type": "numeric", "min": 0, "max": 1, "description": "judge score"},
                ]
            }
        ).decode()
    )
    srv = make_server(tmp_path / "a.duckdb", config=str(cfg))
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            assert _annotate(http, "correctness", label="correct").status_code == 200
            bad = _annotate(http, "correctness", label="mostly")
            assert bad.status_code == 400
            assert "'mostly' is not one of correct, incorrect" in bad.json()["error"]
            bad = _annotate(http, "helpfulness", score=3)
            assert bad.status_code == 400 and "out of range" in bad.json()["error"]
            assert _annotate(http, "tone", label="friendly").status_code == 200  # undeclared: accepted by default
            listed = http.get("/v1/feedback_configs").json()
            assert listed["strict"] is False
            by_name = {d["name"]: d for d in listed["feedback"]}
            assert by_name["correctness"] == {
                "name": "correctness",
                "type": "categorical",
                "labels": ["correct", "incorrect"],
            }
            assert by_name["user_feedback_rating"]["max"] == 5
        rows = sql(srv, "SELECT name, type, labels, min_value, max_value, description FROM feedback_configs")
        assert rows == [
            {"name": "correctness", "type": "categorical", "labels": ["correct", "incorrect"], "min_value": None,
             "max_value": None, "description": None},
            {"name": "helpfulness", "type": "numeric", "labels": None, "min_value": 0.0, "max_value": 1.0,
             "description": "judge score"},
        ]  # fmt: skip
        assert sql(srv, "SELECT name, label FROM feedback ORDER BY name") == [
            {"name": "correctness", "label": "correct"},
            {"name": "tone", "label": "friendly"},
        ]
    finally:
        srv.stop()


def test_declarations_sent_over_the_api_are_enforced_and_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "b.duckdb"
    srv = make_server(db)
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            assert _annotate(http, "stars", score=9).status_code == 200  # not declared yet
            resp = http.post("/v1/feedback_configs", json={"name": "stars", "type": "numeric", "min": 1, "max": 10})
            assert resp.status_code == 200 and resp.json() == {"ok": True, "declared": ["stars"]}
            bad = _annotate(http, "stars", score=11)
            assert bad.status_code == 400 and "stars" in bad.json()["error"] and "1 to 10" in bad.json()["error"]
            # a later declaration of the same name replaces the earlier one
            http.post(
                "/v1/feedback_configs", json={"feedback": [{"name": "stars", "type": "numeric", "min": 1, "max": 5}]}
            )
            assert _annotate(http, "stars", score=9).status_code == 400
    finally:
        srv.stop()
    srv = make_server(db)
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            bad = _annotate(http, "stars", score=7)
            assert bad.status_code == 400 and "1 to 5" in bad.json()["error"]
            assert _annotate(http, "stars", score=4).status_code == 200
        assert sql(srv, "SELECT name, max_value FROM feedback_configs") == [{"name": "stars", "max_value": 5.0}]
        assert sql(srv, "SELECT count(*) AS n FROM feedback_config") == [{"n": 2}]  # history is kept
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "", "type": "numeric"}, "name"),
        ({"name": "x", "type": "colour"}, "type: must be one of"),
        ({"name": "x", "type": "categorical"}, "labels"),
        ({"name": "x", "type": "numeric", "min": 5, "max": 1}, "min (5) is greater than max (1)"),
        ({"name": "x", "type": "numeric", "maximum": 1}, "maximum"),
        ({"feedback": []}, "expected"),
    ],
)
def test_bad_declarations_are_refused_naming_the_problem_and_store_nothing(server, http, body, needle) -> None:
    resp = http.post("/v1/feedback_configs", json=body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]
    assert sql(server, "SELECT count(*) AS n FROM feedback_config") == [{"n": 0}]


def test_strict_mode_refuses_undeclared_names(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "c.duckdb", strict=True)
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            bad = _annotate(http, "tone", label="friendly")
            assert bad.status_code == 400 and "not a declared feedback name" in bad.json()["error"]
            http.post("/v1/feedback_configs", json={"name": "tone", "type": "text"})
            assert _annotate(http, "tone", label="friendly").status_code == 200
            assert http.get("/v1/feedback_configs").json()["strict"] is True
    finally:
        srv.stop()
