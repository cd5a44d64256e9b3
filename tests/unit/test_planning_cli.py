"""``splitdnn plan``: the plan JSON contract, exit 2 for malformed input, 3 for infeasible."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.planning import Stage, evaluate, parse_problem

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
runner = CliRunner()


def plan(*args: str) -> Any:
    return runner.invoke(app, ["plan", *args])


@pytest.mark.parametrize("objective", ["latency", "energy", "throughput"])
def test_plan_json_matches_the_contract(objective: str) -> None:
    path = EXAMPLES / "planning-problem.json"
    done = plan("--problem", str(path), "--objective", objective, "--json")
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert {"stages", "latency_ms", "energy_mj", "throughput_rps", "pareto"} <= body.keys()
    problem = parse_problem(json.loads(path.read_text()))
    stages = [Stage(s["tier"], *s["segments"]) for s in body["stages"]]
    evaluation = evaluate(problem, stages)
    assert evaluation.feasible
    assert body["latency_ms"] == pytest.approx(evaluation.latency_ms)
    assert body["energy_mj"] == pytest.approx(evaluation.energy_mj)
    assert body["throughput_rps"] == pytest.approx(evaluation.throughput_rps)
    points = [(p["latency_ms"], p["energy_mj"]) for p in body["pareto"]]
    assert points == sorted(points) and len(points) >= 1
    assert "exit" not in body


def test_plan_with_exits_reports_exit_and_accuracy() -> None:
    done = plan("--problem", str(EXAMPLES / "planning-problem-exits.json"), "--json",
                "--explain")
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert body["exit"] == 1 and body["accuracy"] == 0.65
    assert body["stages"][-1]["segments"][1] == 5
    assert any("full model" in line and "infeasible" in line for line in body["explanation"])


def test_infeasible_problem_exits_3_naming_the_constraint(tmp_path: Path) -> None:
    data = json.loads((EXAMPLES / "planning-problem.json").read_text())
    data["constraints"] = {"latency_ms": 2}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    done = plan("--problem", str(path))
    assert done.exit_code == 3
    assert "constraints.latency_ms" in done.output


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "--problem"),
    (json.dumps({"segments": []}), "segments"),
])
def test_malformed_problem_exits_2(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    done = plan("--problem", str(path))
    assert done.exit_code == 2
    assert needle in done.output


def test_bad_options_exit_2() -> None:
    path = str(EXAMPLES / "planning-problem.json")
    assert "--objective" in plan("--problem", path, "--objective", "speed").output
    assert plan("--problem", path, "--algorithm", "magic").exit_code == 2
    assert plan("--problem", "/nonexistent.json").exit_code == 2
