"""How a reconcile pass ends when it is not done, and what it tells people about it.

A pass that waits (for a Job, a rollout) raises :class:`Waiting`; one that cannot go on
without a change by the user raises :class:`Stalled`. Both are normal states of an object,
already written into its conditions, so the handlers in ``operator.py`` catch them and log
them once per change at INFO and WARNING instead of letting kopf log "failed temporarily" at
ERROR on every 3 s timer run. Warning Events are posted once per object and cause
(:func:`warn_once`), not on every pass that sees the same cause.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

log = logging.getLogger("splitdnn.operator")
_logged: dict[str, str] = {}  # object uid -> the last wait or stall logged for it
_warned: set[tuple[str, str, str]] = set()  # (object uid, reason, cause) already posted
MAX_REMEMBERED = 10_000


class Waiting(Exception):
    """The pass waits on something that will happen without the user (a Job, a rollout)."""


class Stalled(Exception):
    """The pass cannot go on until the user changes the spec (the conditions say why)."""


def uid_of(body: dict[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def log_state(body: dict[str, Any], kind: str, state: Waiting | Stalled) -> None:
    """Log a wait (INFO) or a stall (WARNING) when it differs from the last one logged."""
    uid = uid_of(body)
    text = f"{type(state).__name__}: {state}"
    if _logged.get(uid) == text:
        return
    if len(_logged) > MAX_REMEMBERED:
        _logged.clear()
    _logged[uid] = text
    meta = body.get("metadata") or {}
    level = logging.WARNING if isinstance(state, Stalled) else logging.INFO
    log.log(level, "%s %s/%s: %s", kind, meta.get("namespace"), meta.get("name"), text)


def forget(body: dict[str, Any]) -> None:
    """The object finished a pass: its next wait is news again."""
    _logged.pop(uid_of(body), None)


def warn_once(body: dict[str, Any], reason: str, message: str, cause: str | None = None
              ) -> bool:
    """Post a Warning Event unless one was posted for this object, reason and cause
    (default: the message). True when it was posted."""
    key = (uid_of(body), reason, cause if cause is not None else message)
    if key in _warned:
        return False
    if len(_warned) > MAX_REMEMBERED:
        _warned.clear()
    _warned.add(key)
    kopf.warn(kopf.Body(body), reason=reason, message=message)  # type: ignore[arg-type]
    return True


class TimerSuccessFilter(logging.Filter):
    """kopf logs "Timer 'x' succeeded." at INFO on every run of every timer (every 3 s per
    object); keep those lines for DEBUG logging only."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno == logging.INFO and message.startswith("Timer ") \
                and message.endswith(" succeeded."):
            return logging.getLogger("kopf").isEnabledFor(logging.DEBUG)
        return True
