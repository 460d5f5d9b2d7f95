"""What every test shares: hypothesis settings that hold on a loaded machine, and a real
Mosquitto of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from tools import Mosquitto, mosquitto_binary

# Property tests judge values, never speed: no per-example deadline, no "too slow" failure
# when CI shares its two cores with the integration tests' brokers and daemons.
settings.register_profile(
    "riskmon", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("riskmon")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto on a free loopback port that persists its sessions across a restart."""
    b = Mosquitto(mosquitto_binary(), tmp_path, persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()
