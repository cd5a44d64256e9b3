"""The integration tests' operator-log check: every traceback fails a test, but for kopf's
known noise while the operator stops (an async generator asyncio closes at loop shutdown)."""

from __future__ import annotations

import pytest

from tests.integration.operators import log_tracebacks

SHUTDOWN_NOISE = """\
2026-11-23 18:36:54,928 ERROR asyncio: an error occurred during closing of asynchronous \
generator <async_generator object infinite_watch at 0x7f3b4ed50580>
asyncgen: <async_generator object infinite_watch at 0x7f3b4ed50580>
Traceback (most recent call last):
  File "kopf/_cogs/clients/watching.py", line 88, in infinite_watch
    yield raw_event
GeneratorExit
RuntimeError: generator didn't stop after athrow()
"""
HANDLER_ERROR = """\
2026-11-23 18:35:02,243 ERROR kopf.objects: Handler 'service_changed' failed with an exception.
Traceback (most recent call last):
  File "splitdnn/controller/dnnservice.py", line 10, in reconcile
KeyError: 'spec'
"""
RUNNING = "2026-11-23 18:34:59,190 INFO splitdnn.operator: DNNService t/dr: Waiting\n"
STOPPING = ("2026-11-23 18:36:49,920 INFO kopf._core.reactor.running: Signal SIGTERM is "
            "received. Operator is stopping.\n")


def test_a_clean_log_has_no_tracebacks() -> None:
    assert log_tracebacks(RUNNING + STOPPING) == []


def test_kopfs_watch_stream_noise_after_the_stop_signal_is_tolerated() -> None:
    assert log_tracebacks(RUNNING + STOPPING + SHUTDOWN_NOISE + RUNNING) == []


@pytest.mark.parametrize("log", [
    RUNNING + SHUTDOWN_NOISE + STOPPING,  # before the operator was told to stop
    RUNNING + HANDLER_ERROR + STOPPING,
    RUNNING + STOPPING + HANDLER_ERROR,  # any other traceback, even while stopping
    "Traceback (most recent call last):\n  File \"x.py\"\nValueError\n",  # no timestamps
])
def test_any_other_traceback_is_reported(log: str) -> None:
    tracebacks = log_tracebacks(log)
    assert len(tracebacks) == 1 and "Traceback" in tracebacks[0]


def test_records_of_kopf_runs_own_format_are_told_apart() -> None:
    kopf_format = "\n".join(f"[{line[:23]}] {line[24:]}" if line[:4].isdigit() else line
                            for line in (RUNNING + STOPPING + SHUTDOWN_NOISE).splitlines())
    assert kopf_format.startswith("[2026-11-23 18:34:59,190] INFO")
    assert log_tracebacks(kopf_format) == []
