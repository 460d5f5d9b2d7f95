"""Fixtures the integration tests share: a real Mosquitto of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tools import Mosquitto, mosquitto_binary


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto on a free loopback port that persists its sessions across a restart."""
    b = Mosquitto(mosquitto_binary(), tmp_path, persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()
