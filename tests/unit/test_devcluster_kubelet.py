"""The devcluster kubelet's pure parts: Kubernetes' ``$(VAR)`` expansion, and when a
container counts as running."""

from __future__ import annotations

import asyncio
import sys

import pytest

from splitdnn.devcluster.kubelet import Container, _running, expand_vars

ENV = {"POD_IP": "10.0.0.7", "PORT": "5555", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expanded"), [
    ("tcp://$(POD_IP):$(PORT)", "tcp://10.0.0.7:5555"),
    ("--x=$(EMPTY)", "--x="),
    ("$(UNDEFINED) stays", "$(UNDEFINED) stays"),  # as Kubernetes leaves it
    ("$$(POD_IP) is escaped", "$(POD_IP) is escaped"),
    ("$$$(PORT)", "$5555"),
    ("cost $5 and $(PORT", "cost $5 and $(PORT"),  # not a reference: literal
    ("$()", "$()"),
    ("no references", "no references"),
])
def test_var_references_expand_like_kubernetes(text: str, expanded: str) -> None:
    assert expand_vars(text, ENV) == expanded


def test_an_exited_container_runs_until_its_exit_is_recorded() -> None:
    """asyncio sets the return code before the kubelet's waiter records the exit; a sync in
    between must not take the container for one never started (it launched it twice)."""

    async def exited_unrecorded() -> Container:
        container = Container(name="main", spec={})
        assert not _running(container)  # never started
        container.process = await asyncio.create_subprocess_exec(sys.executable, "-c", "")
        while container.process.returncode is None:
            await asyncio.sleep(0.01)
        return container

    container = asyncio.run(exited_unrecorded())
    assert container.process is not None and container.process.returncode == 0
    assert _running(container)  # the waiter has not recorded the exit yet
    container.exit_code = 0
    assert not _running(container)
