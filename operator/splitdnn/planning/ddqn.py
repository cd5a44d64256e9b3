"""The online policy of paper 003 (Algorithm 2): a Double DQN trained in the task-stream
simulator, with Table I's settings (2 fully connected hidden layers of 20 tanh neurons,
discount 0.9, replay memory of 100 000 transitions).

The state is the paper's ``(D_n, τ_n − device wait, edge overlap)``, scaled by the largest
deadline; the action is one of the model's ``(m, p)`` decisions. Decisions the regression
models say would miss the deadline are masked out (the agent may still give up), so the
network learns which feasible decision leaves the most room for the tasks behind it.
A trained agent is saved as a torch state dict (``FILE``) beside its configuration
(``FILE`` with suffix ``.json``). torch is imported here only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitdnn.planning.stream import (
    Queues,
    StreamModel,
    Task,
    apply,
    branchy_alexnet,
    feasible_actions,
    generate_tasks,
    observe,
)


@dataclass(frozen=True)
class DDQNConfig:
    """Training settings; the stream settings (rate, k, devices) are what it was trained on."""

    hidden: int = 20
    layers: int = 2
    gamma: float = 0.9
    replay: int = 100_000
    batch: int = 32
    learning_rate: float = 1e-3
    target_every: int = 200
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    episodes: int = 300
    tasks: int = 100
    arrival_rate: float = 0.1
    k: int = 3
    devices: int = 3
    seed: int = 0
    actions: int = 0  # filled from the stream model

    @property
    def scale(self) -> float:
        """Largest deadline in slots (data sizes are at most 10)."""
        return float(self.k * 10)


def build_network(config: DDQNConfig) -> nn.Sequential:
    """``layers`` fully connected tanh layers of ``hidden`` neurons, one output per action."""
    parts: list[nn.Module] = []
    width = 3
    for _ in range(config.layers):
        parts += [nn.Linear(width, config.hidden), nn.Tanh()]
        width = config.hidden
    parts.append(nn.Linear(width, config.actions))
    return nn.Sequential(*parts)


class DDQNAgent:
    """A Q network and the settings it was trained with; ``decide`` is a stream policy."""

    def __init__(self, network: nn.Sequential, config: DDQNConfig) -> None:
        self.network = network
        self.config = config

    def features(self, queues: Queues, task: Task) -> np.ndarray:
        size, remaining, overlap = observe(queues, task)
        return np.array([size / 10.0, remaining / self.config.scale,
                         overlap / self.config.scale], dtype=np.float32)

    def decide(self, model: StreamModel, queues: Queues, task: Task) -> tuple[int, int]:
        """The feasible action with the highest Q value."""
        mask = np.array(feasible_actions(model, queues, task))
        with torch.no_grad():
            values = self.network(torch.from_numpy(self.features(queues, task))).numpy()
        values = np.where(mask, values, -np.inf)
        return model.actions()[int(np.argmax(values))]

    def save(self, path: Path) -> Path:
        """Write the state dict to ``path`` and the configuration beside it; return the latter."""
        torch.save(self.network.state_dict(), path)
        config_path = path.with_suffix(".json")
        config_path.write_text(json.dumps({"kind": "splitdnn-ddqn", **asdict(self.config)},
                                          indent=2))
        return config_path

    @classmethod
    def load(cls, path: Path) -> DDQNAgent:
        """Read an agent saved by ``save`` (weights only: no pickled code is executed)."""
        data: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
        if data.pop("kind", None) != "splitdnn-ddqn":
            raise ValueError(f"{path.with_suffix('.json')}: not a splitdnn DDQN configuration")
        config = DDQNConfig(**data)
        network = build_network(config)
        network.load_state_dict(torch.load(path, weights_only=True))
        network.eval()
        return cls(network, config)


class _Replay:
    """Ring buffer of transitions (state, action, reward, next state, next mask, terminal)."""

    def __init__(self, capacity: int, actions: int) -> None:
        self.states = np.zeros((capacity, 3), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_states = np.zeros((capacity, 3), np.float32)
        self.next_masks = np.zeros((capacity, actions), bool)
        self.terminal = np.zeros(capacity, bool)
        self.size = self.cursor = 0

    def push(self, state: np.ndarray, action: int, reward: float, next_state: np.ndarray,
             next_mask: np.ndarray, terminal: bool) -> None:
        i = self.cursor
        self.states[i], self.actions[i], self.rewards[i] = state, action, reward
        self.next_states[i], self.next_masks[i], self.terminal[i] = next_state, next_mask, terminal
        self.cursor = (i + 1) % len(self.actions)
        self.size = min(self.size + 1, len(self.actions))

    def sample(self, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, ...]:
        rows = rng.integers(self.size, size=count)
        return (torch.from_numpy(self.states[rows]), torch.from_numpy(self.actions[rows]),
                torch.from_numpy(self.rewards[rows]), torch.from_numpy(self.next_states[rows]),
                torch.from_numpy(self.next_masks[rows]), torch.from_numpy(self.terminal[rows]))


class _Trainer:
    """Algorithm 2: ε-greedy episodes, replay, Double-DQN targets, periodic target copy."""

    def __init__(self, config: DDQNConfig, model: StreamModel) -> None:
        torch.manual_seed(config.seed)
        self.config, self.model = config, model
        self.rng = np.random.default_rng(config.seed)
        self.agent = DDQNAgent(build_network(config), config)
        self.target = build_network(config)
        self.target.load_state_dict(self.agent.network.state_dict())
        self.optimiser = torch.optim.Adam(self.agent.network.parameters(),
                                          lr=config.learning_rate)
        self.replay = _Replay(config.replay, config.actions)
        self.steps = 0

    def epsilon(self, episode: int) -> float:
        fraction = min(1.0, episode / max(1, 0.8 * self.config.episodes))
        return self.config.epsilon_start + fraction * (
            self.config.epsilon_end - self.config.epsilon_start)

    def choose(self, state: np.ndarray, mask: np.ndarray, epsilon: float) -> int:
        if self.rng.random() < epsilon:
            return int(self.rng.choice(np.flatnonzero(mask)))
        with torch.no_grad():
            values = self.agent.network(torch.from_numpy(state)).numpy()
        return int(np.argmax(np.where(mask, values, -np.inf)))

    def learn(self) -> None:
        states, actions, rewards, next_states, next_masks, terminal = self.replay.sample(
            self.rng, self.config.batch)
        with torch.no_grad():
            online = self.agent.network(next_states).masked_fill(~next_masks, -torch.inf)
            chosen = online.argmax(dim=1, keepdim=True)
            later = self.target(next_states).gather(1, chosen).squeeze(1)
            targets = rewards + self.config.gamma * later * (~terminal).float()
        values = self.agent.network(states).gather(1, actions.unsqueeze(1)).squeeze(1)
        loss = nn.functional.mse_loss(values, targets)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()

    def episode(self, epsilon: float) -> float:
        config, model = self.config, self.model
        tasks = generate_tasks(config.tasks, config.arrival_rate, config.k, config.devices,
                               self.rng)
        queues = Queues((0,) * config.devices, 0)
        actions = model.actions()
        total = 0.0
        state = self.agent.features(queues, tasks[0])
        mask = np.array(feasible_actions(model, queues, tasks[0]))
        for index, task in enumerate(tasks):
            choice = self.choose(state, mask, epsilon)
            outcome = apply(model, queues, task, actions[choice])
            reward = model.gain(model.accuracy(actions[choice]) if outcome.done else 0.0)
            total += reward
            queues = outcome.queues
            last = index + 1 == len(tasks)
            following = tasks[index] if last else tasks[index + 1]
            next_state = self.agent.features(queues, following)
            next_mask = np.array(feasible_actions(model, queues, following))
            self.replay.push(state, choice, reward, next_state, next_mask, last)
            state, mask = next_state, next_mask
            if self.replay.size >= config.batch:
                self.learn()
            self.steps += 1
            if self.steps % config.target_every == 0:
                self.target.load_state_dict(self.agent.network.state_dict())
        return total


def train(config: DDQNConfig, model: StreamModel | None = None,
          progress: Callable[[int, float], None] | None = None) -> tuple[DDQNAgent, list[float]]:
    """Train an agent in the simulator; returns it and each episode's sum of rewards."""
    model = model or branchy_alexnet()
    config = DDQNConfig(**{**asdict(config), "actions": len(model.actions())})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny network: threads only add overhead
    try:
        trainer = _Trainer(config, model)
        returns = []
        for episode in range(config.episodes):
            returns.append(trainer.episode(trainer.epsilon(episode)))
            if progress is not None:
                progress(episode, returns[-1])
    finally:
        torch.set_num_threads(threads)
    trainer.agent.network.eval()
    return trainer.agent, returns
