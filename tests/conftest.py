"""Shared fixtures: real sink processes and outside tools."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sinkprocess import SinkProcess


def require_tool(name: str, package: str) -> str:
    """Return the path of an outside program; skip without it, but fail when CI=true."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} not found: install the Debian package {package}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def start_sink(tmp_path: Path) -> Iterator[Any]:
    """Return a function that starts `sink serve`; every process started is stopped afterwards."""
    started: list[SinkProcess] = []

    def start(*options: str, spool: Path | None | bool = True, **kwargs: Any) -> SinkProcess:
        directory = tmp_path / f"spool{len(started)}" if spool is True else spool or None
        sink = SinkProcess(*options, spool=directory, **kwargs)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.kill()
