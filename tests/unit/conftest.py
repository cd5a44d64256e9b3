"""Fixtures the unit tests of the controllers share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting


@pytest.fixture
def posted() -> Iterator[Callable[[], list[tuple[str, str]]]]:
    """The Events the passes post with kopf.info/warn, outside a running operator: a
    function returning (reason, message) of those posted so far."""
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    tokens = [(posting.settings_var, posting.settings_var.set(kopf.OperatorSettings())),
              (posting.event_queue_var, posting.event_queue_var.set(queue)),
              (posting.event_queue_loop_var, posting.event_queue_loop_var.set(loop))]
    seen: list[tuple[str, str]] = []

    def drain() -> list[tuple[str, str]]:
        loop.run_until_complete(asyncio.sleep(0))  # runs the posts queued from this thread
        while not queue.empty():
            event = queue.get_nowait()
            seen.append((event.reason, event.message))
        return seen

    try:
        yield drain
    finally:
        for var, token in reversed(tokens):
            var.reset(token)  # type: ignore[attr-defined]
        loop.close()
