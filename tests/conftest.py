"""Shared test fixtures: an export cache shared by the whole session; the ``--cluster``
options of the integration tier (tests/integration/cluster.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import add_options, read_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    read_options(config)  # a --cluster option that cannot work is a usage error at once


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exported torchvision models are cached once per session (or in $SPLITDNN_TEST_CACHE)."""
    configured = os.environ.get("SPLITDNN_TEST_CACHE")
    path = Path(configured) if configured else tmp_path_factory.mktemp("splitdnn-cache")
    previous = os.environ.get("SPLITDNN_CACHE_DIR")
    os.environ["SPLITDNN_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("SPLITDNN_CACHE_DIR", None)
    else:
        os.environ["SPLITDNN_CACHE_DIR"] = previous
