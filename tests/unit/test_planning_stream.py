"""Task stream (paper 003): the simulator's timeline, dp is the exact optimum, policies, DDQN."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.planning.stream import (
    Branch,
    Layer,
    Linear,
    Policy,
    Queues,
    StreamModel,
    Task,
    apply,
    branchy_alexnet,
    dp_optimum,
    fit_linear,
    generate_tasks,
    replay,
    simulate,
)


def tiny_model() -> StreamModel:
    """Two exits of two layers each: few enough decisions to enumerate every sequence."""
    def layer(device: float, edge: float, out: float) -> Layer:
        return Layer("l", Linear(device, 0.0), Linear(edge, 0.0), Linear(out, 0.0))
    return StreamModel(
        branches=(Branch(0.5, (layer(1.0, 0.3, 2.0), layer(0.5, 0.2, 0.1))),
                  Branch(0.8, (layer(1.0, 0.3, 2.0), layer(2.0, 0.6, 0.1)))),
        input_kbit=Linear(3.0, 0.0), rate_kbit_per_slot=2.0)


@st.composite
def tiny_streams(draw: st.DrawFn) -> tuple[list[Task], int]:
    devices = draw(st.integers(1, 2))
    count = draw(st.integers(1, 4))
    tasks, slot = [], 0
    for _ in range(count):
        slot += draw(st.integers(1, 4))
        size = draw(st.integers(1, 4))
        tasks.append(Task(slot, draw(st.integers(0, devices - 1)), size,
                          draw(st.integers(1, 3)) * size))
    return tasks, devices


@settings(max_examples=150, deadline=None)
@given(tiny_streams())
def test_dp_equals_brute_force_on_tiny_streams(stream: tuple[list[Task], int]) -> None:
    tasks, devices = stream
    model = tiny_model()
    best = -math.inf
    for sequence in itertools.product(model.actions(), repeat=len(tasks)):
        result = replay(model, tasks, devices, _scripted(list(sequence)))
        best = max(best, result.sum_reward)
    optimum = dp_optimum(model, tasks, devices)
    assert optimum.sum_reward == pytest.approx(best)
    again = replay(model, tasks, devices, _scripted(optimum.actions))
    assert again.sum_reward == pytest.approx(optimum.sum_reward)  # its decisions achieve it


def _scripted(actions: list[tuple[int, int]]) -> Policy:
    decisions = iter(actions)
    return lambda *_: next(decisions)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.1, 0.3]), st.integers(1, 4),
       st.integers(1, 3))
def test_dp_beats_greedy_and_random(seed: int, rate: float, k: int, devices: int) -> None:
    model = branchy_alexnet()
    tasks = generate_tasks(25, rate, k, devices, np.random.default_rng(seed))
    optimum = simulate("dp", tasks, devices, model).sum_reward
    assert optimum >= simulate("greedy", tasks, devices, model).sum_reward - 1e-9
    assert optimum >= simulate("random", tasks, devices, model, seed=seed).sum_reward - 1e-9


def test_timeline_follows_the_paper() -> None:
    model = tiny_model()
    queues = Queues((5, 0), 9)
    task = Task(arrival=2, device=0, size=2, deadline=20)
    # branch 2 cut after layer 1: device 2 slots from t=5, send 4 kbit at 2 kbit/slot,
    # edge busy until 9, then 2·0.6 = 1.2 -> 2 slots
    outcome = apply(model, queues, task, (2, 1))
    assert outcome.done and outcome.finish == 11
    assert outcome.queues == Queues((7, 0), 11)
    late = apply(model, queues, Task(2, 0, 2, 8), (2, 1))
    assert not late.done and late.queues == queues  # a missed deadline is not run
    local = apply(model, queues, task, (1, 2))
    assert local.finish == 8 and local.queues.edge == 9  # fully local: no edge queue


def test_gain_function() -> None:
    model = branchy_alexnet()
    assert model.gain(model.min_accuracy) == pytest.approx(1 + 0.1 / 2)
    assert model.gain(0.743) == pytest.approx(1 + 0.1 / (1 + math.exp(-16 * (0.743 - 0.527))))
    assert model.gain(0.0) < 1e-4


def test_fit_linear_recovers_the_regression_line() -> None:
    sizes = [1, 2, 4, 8]
    line = fit_linear(sizes, [0.3 * x + 0.05 for x in sizes])
    assert line.slope == pytest.approx(0.3) and line.intercept == pytest.approx(0.05)
    with pytest.raises(ValueError, match="two or more"):
        fit_linear([3, 3], [1, 1])


def test_ddqn_trains_saves_and_loads(tmp_path: Path) -> None:
    from splitdnn.planning.ddqn import DDQNAgent, DDQNConfig, train

    agent, returns = train(DDQNConfig(episodes=3, tasks=20, seed=1))
    assert len(returns) == 3 and all(r >= 0 for r in returns)
    path = tmp_path / "ddqn.pt"
    agent.save(path)
    loaded = DDQNAgent.load(path)
    model = branchy_alexnet()
    tasks = generate_tasks(30, 0.3, 3, 3, np.random.default_rng(7))
    first = replay(model, tasks, 3, agent.decide)
    second = replay(model, tasks, 3, loaded.decide)
    assert first.actions == second.actions
    assert second.sum_reward <= dp_optimum(model, tasks, 3).sum_reward + 1e-9


runner = CliRunner()


def test_stream_sim_contract() -> None:
    done = runner.invoke(app, ["stream-sim", "--policy", "greedy", "--tasks", "30",
                               "--arrival-rate", "0.2", "--k", "2", "--devices", "2",
                               "--seed", "3", "--json"])
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert {"sum_reward", "completed", "mean_accuracy"} <= body.keys()
    assert 0 <= body["completed"] <= 30


@pytest.mark.parametrize(("args", "needle"), [
    (["--policy", "ddqn"], "--model"),
    (["--policy", "best"], "--policy"),
    (["--policy", "dp", "--arrival-rate", "1.5"], "--arrival-rate"),
])
def test_stream_sim_bad_options_exit_2(args: list[str], needle: str) -> None:
    done = runner.invoke(app, ["stream-sim", *args])
    assert done.exit_code == 2
    assert needle in done.output
