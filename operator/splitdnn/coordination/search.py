"""Path search: paper 000's Algorithm 1 (CoDE) and an exhaustive mode for ground truth.

Algorithm 1 keeps the candidates ``P' = {p : Th_p > Th_0}``. At each stage it predicts the
accuracy of every untrained candidate from the paths trained so far by inverse-distance
weighting (eq. 3, distances between the vectors ``r_p``), turns predictions into predicted
rewards, trains the path with the highest one and computes its real reward ``q``. When
``q − q_prv < ε`` a counter grows, otherwise it resets; the search stops when the counter
reaches ``c_stop`` (or every candidate has been trained). ``q_prv`` is the best reward found
so far, as the paper's text says ("if the algorithm fails to achieve higher rewards after
c_stop stages, it terminates"); the pseudo-code's literal ``q_prv ← q`` (the previous stage's
reward) would count any rise after a fall as progress and, on our problems, degenerates into
training every candidate. Paths already trained are not trained again. Before anything is
trained there is nothing to interpolate from, so the first prediction is the main path's
accuracy ``A_0`` (an optimistic prior: the first stage trains the path with the largest
throughput gain).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from splitdnn.coordination.errors import CoordinationError
from splitdnn.coordination.paths import Path
from splitdnn.coordination.throughput import PathThroughput, average_accuracy, reward

Evaluate = Callable[[Path], float]  # trains a path's links and returns its test accuracy


@dataclass(frozen=True)
class Objective:
    """Reward parameters: ``A_0``, ``A_min`` and the sigmoid steepness ``k``."""

    main_accuracy: float
    a_min: float
    k: float

    def reward(self, throughput: PathThroughput, accuracy: float) -> float:
        """``F(p)`` for a path with the given accuracy."""
        avg = average_accuracy(throughput, self.main_accuracy, accuracy)
        return reward(avg, throughput.gain, self.a_min, self.k)


@dataclass(frozen=True)
class Evaluation:
    """One trained path: its accuracy, what the search predicted, and its reward."""

    path: Path
    accuracy: float
    predicted_accuracy: float | None
    avg_accuracy: float
    throughput: PathThroughput
    reward: float

    def as_json(self) -> dict[str, object]:
        """The contract's per-path object."""
        return {"path": self.path.as_list(), "accuracy": round(self.accuracy, 6),
                "avg_accuracy": round(self.avg_accuracy, 6),
                "throughput_gain": round(self.throughput.gain, 3),
                "reward": round(self.reward, 6)}


@dataclass
class SearchResult:
    """Trained paths in training order, the candidates and why the search stopped."""

    mode: str
    candidates: int
    trained: list[Evaluation] = field(default_factory=list)
    stopped: str = ""

    @property
    def best(self) -> Evaluation | None:
        """The trained path with the highest real reward."""
        return max(self.trained, key=lambda e: e.reward, default=None)

    @property
    def trainings(self) -> int:
        """Link sets trained."""
        return len(self.trained)


def distance(first: Path, second: Path) -> float:
    """``d = ||r_p − r_q||_2``."""
    return math.dist(first.vector, second.vector)


def predict_accuracy(path: Path, trained: Sequence[Evaluation], prior: float) -> float:
    """Paper 000 eq. 3: inverse-distance-weighted accuracy of the trained paths."""
    weighted = [(1.0 / distance(path, e.path), e.accuracy) for e in trained if e.path != path]
    if not weighted:
        return prior
    return sum(w * a for w, a in weighted) / sum(w for w, _ in weighted)


def candidates_above_baseline(throughputs: Sequence[PathThroughput]) -> list[PathThroughput]:
    """``P'``: the paths whose total throughput beats the main path's."""
    return [t for t in throughputs if t.total > t.baseline]


def evaluation(throughput: PathThroughput, accuracy: float, predicted: float | None,
               objective: Objective) -> Evaluation:
    """An Evaluation with its average accuracy and reward filled in."""
    if not 0.0 <= accuracy <= 1.0:
        raise CoordinationError(f"path {throughput.path}: accuracy {accuracy} is not in [0, 1]")
    return Evaluation(path=throughput.path, accuracy=accuracy, predicted_accuracy=predicted,
                      avg_accuracy=average_accuracy(throughput, objective.main_accuracy,
                                                    accuracy),
                      throughput=throughput, reward=objective.reward(throughput, accuracy))


def code_search(throughputs: Sequence[PathThroughput], evaluate: Evaluate, objective: Objective,
                c_stop: int = 3, epsilon: float = 0.0) -> SearchResult:
    """Algorithm 1 of paper 000 over the paths in ``throughputs``."""
    if c_stop < 1:
        raise CoordinationError(f"c_stop: expected >= 1, got {c_stop}")
    if epsilon < 0:
        raise CoordinationError(f"epsilon: expected >= 0, got {epsilon}")
    pool = candidates_above_baseline(throughputs)
    result = SearchResult(mode="code", candidates=len(pool))
    if not pool:
        result.stopped = "no path beats the main path's throughput"
        return result
    counter, q_best = 0, -1.0
    while counter < c_stop:
        untrained = [t for t in pool if t.path not in {e.path for e in result.trained}]
        if not untrained:
            result.stopped = "every candidate trained"
            return result
        predicted = {t.path: predict_accuracy(t.path, result.trained, objective.main_accuracy)
                     for t in untrained}
        chosen = max(untrained, key=lambda t: (objective.reward(t, predicted[t.path]), t.path))
        trained = evaluation(chosen, evaluate(chosen.path), predicted[chosen.path], objective)
        result.trained.append(trained)
        counter = counter + 1 if trained.reward - q_best < epsilon else 0
        q_best = max(q_best, trained.reward)
    result.stopped = f"{c_stop} stages without an improvement of epsilon={epsilon}"
    return result


def exhaustive_search(throughputs: Sequence[PathThroughput], evaluate: Evaluate,
                      objective: Objective) -> SearchResult:
    """Train every candidate of ``P'`` (ground truth for Algorithm 1)."""
    pool = candidates_above_baseline(throughputs)
    result = SearchResult(mode="exhaustive", candidates=len(pool))
    for throughput in pool:
        result.trained.append(evaluation(throughput, evaluate(throughput.path), None,
                                         objective))
    result.stopped = "every candidate trained" if pool else \
        "no path beats the main path's throughput"
    return result


@dataclass(frozen=True)
class Comparison:
    """How Algorithm 1 did against the exhaustive optimum."""

    search_trainings: int
    exhaustive_trainings: int
    found_optimum: bool
    reward_gap: float  # exhaustive best reward minus the search's best (0 when found)

    def as_json(self) -> dict[str, object]:
        """Plain fields for reports."""
        return {"search_trainings": self.search_trainings,
                "exhaustive_trainings": self.exhaustive_trainings,
                "found_optimum": self.found_optimum, "reward_gap": self.reward_gap}


def compare(search: SearchResult, exhaustive: SearchResult) -> Comparison:
    """Trainings needed and whether the search's best is the exhaustive best."""
    best, optimum = search.best, exhaustive.best
    if optimum is None:
        return Comparison(search.trainings, exhaustive.trainings, best is None, 0.0)
    found = best is not None and (best.path == optimum.path or
                                  math.isclose(best.reward, optimum.reward, rel_tol=1e-12))
    gap = optimum.reward - (best.reward if best is not None else 0.0)
    return Comparison(search.trainings, exhaustive.trainings, found, 0.0 if found else gap)


def table_evaluator(accuracies: dict[Path, float]) -> Evaluate:
    """An evaluator over known accuracies (tests, replaying a recorded exhaustive run)."""
    def evaluate(path: Path) -> float:
        if path not in accuracies:
            raise CoordinationError(f"path {path}: no accuracy recorded")
        return accuracies[path]
    return evaluate
