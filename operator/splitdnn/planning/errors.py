"""Errors of the planner: a malformed problem, or one no plan can satisfy."""

from __future__ import annotations


class PlanningError(Exception):
    """Base class of planning errors."""


class ProblemError(PlanningError):
    """The problem is malformed; the message starts with the offending field."""


class InfeasibleError(PlanningError):
    """No plan meets the constraints; ``constraint`` names the one that cannot be met."""

    def __init__(self, constraint: str, message: str) -> None:
        super().__init__(message)
        self.constraint = constraint
