"""Bad input, fuzzed: the event decoder (coverage-guided, atheris) and property tests of the
parsers a user or a venue can feed (events, recordings, the config file, the environment).

No input may crash: each ends as a decoded value, a counted rejection with a reason from the
bounded set, or a clear :class:`ConfigError`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.replay import iter_batches
from monitor.config import Config, load_config, redacted
from monitor.model.events import (
    AccountEvent,
    Event,
    EventDecoder,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
    encode_event,
)
from monitor.model.settings import ConfigError, dec_hook

FUZZ = Path(__file__).resolve().parent / "fuzz"
T0 = 1_767_225_600_000

# --- coverage-guided: atheris ------------------------------------------------------------


def test_atheris_event_decoder_short_run(tmp_path: Path) -> None:
    """A fixed budget of libFuzzer executions from the seed corpus finds no crash."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus", corpus)
    seeds = len(list(corpus.iterdir()))
    dict_and_corpus = [f"-dict={FUZZ / 'events.dict'}", str(corpus)]
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_events.py"), "-runs=50000", "-seed=1", *dict_and_corpus],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 50000 runs" in result.stderr
    # It explored: the corpus grew beyond the seeds (new coverage was found and kept).
    assert len(list(corpus.iterdir())) > seeds


# --- events ------------------------------------------------------------------------------

#: Every kind of value a field can be sent, including what JSON cannot say (NaN: the text
#: ``NaN`` is not JSON) and what a float cannot hold (1e999).
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 1e-300]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
RAW_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "nan"])
VALUES: st.SearchStrategy[Any] = st.one_of(
    NUMBERS, st.text(max_size=30), st.none(), st.booleans(), st.just([])
)
FIELDS = [
    "ts",
    "instrument",
    "price",
    "iv",
    "underlying_price",
    "account",
    "quantity",
    "equity",
    "initial_margin",
    "maintenance_margin",
]


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["price", "position", "account", "instrument", "trade"]))
    obj: dict[str, Any] = {"type": kind, "ts": T0, "instrument": "BTC", "price": 1.0}
    obj |= {"account": "main", "quantity": 1.0, "equity": 1.0}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        obj[name] = draw(VALUES)
    text = json.dumps(obj)
    raw = draw(st.one_of(st.none(), RAW_NUMBERS))
    if raw is not None:  # splice a non-JSON number in place of one value
        name = draw(st.sampled_from(["price", "quantity", "equity", "ts"]))
        text = text.replace(f'"{name}": {json.dumps(obj[name])}', f'"{name}": {raw}', 1)
    return text.encode()


@given(messages())
def test_every_message_decodes_or_is_refused_with_a_reason(msg: bytes) -> None:
    decoder = EventDecoder()
    try:
        event: Event = decoder.decode(msg)
    except Rejected as rej:
        reason: Reason | None = rej.reason
    else:
        reason = None
    if reason is not None:
        assert reason in set(Reason)
        return
    # Accepted: every number in it is finite and the event survives a round trip.
    for name in FIELDS:
        value = getattr(event, name, None)
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    if isinstance(event, PriceEvent):
        assert event.price > 0
    assert decoder.decode(encode_event(event)) == event


@given(st.lists(messages() | st.binary(max_size=40), max_size=12))
def test_batch_decoding_equals_line_by_line_decoding(lines: list[bytes]) -> None:
    """The replay fast path (one C call per chunk) agrees with decoding each line."""
    clean = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    buf = b"\n".join(clean) + b"\n"
    decoder = EventDecoder()
    events, rejections = decoder.decode_lines(buf)
    expected_events: list[Event] = []
    expected_rejected: list[tuple[int, Reason]] = []
    for n, line in enumerate(clean):
        if not line.strip():
            continue
        try:
            expected_events.append(decoder.decode(line))
        except Rejected as rej:
            expected_rejected.append((n, rej.reason))
    assert events == expected_events
    assert [(n, r.reason) for n, r in rejections] == expected_rejected


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(body=st.binary(max_size=2000), suffix=st.sampled_from([".jsonl", ".jsonl.gz"]))
def test_a_corrupt_recording_is_a_clear_error_or_counted_rejections(
    tmp_path: Path, body: bytes, suffix: str
) -> None:
    path = tmp_path / f"rec{suffix}"
    path.write_bytes(body)
    try:
        for batch in iter_batches(path):
            assert all(r.reason in set(Reason) for _, r in batch.rejections)
    except (OSError, ValueError, EOFError):
        pass  # "not gzip", "truncated": the CLI prints these as one line


# --- configuration -----------------------------------------------------------------------

SECTION_KEYS = {
    "server": ["listen"],
    "estimator": ["sample_interval", "halflife", "fast_halflife", "warmup", "max_gap"],
    "risk": ["eval_interval", "var_confidence", "var_horizon", "var_scenarios", "budgets"],
    "engine": ["queue_size"],
    "margin": ["price_range", "price_steps", "aggregation", "max_move", "stresses"],
    "alerts": ["outbox", "webhook"],
}
TOML_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda x: (
            "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)
        )
    ),
    st.text(max_size=20).map(json.dumps),
    st.sampled_from(['"250ms"', '"1h30m"', '"0s"', '"-1s"', '"1x"', "true", "[]", "{}"]),
    st.sampled_from(['"127.0.0.1:9321"', '"[::1]:0"', '"0.0.0.0"', '"sum"', '"joint"']),
)


@st.composite
def toml_files(draw: st.DrawFn) -> str:
    out = []
    for section in draw(st.lists(st.sampled_from(list(SECTION_KEYS)), max_size=3, unique=True)):
        out.append(f"[{section}]")
        keys = SECTION_KEYS[section] + ["halflif", "typo_key"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            out.append(f"{key} = {draw(TOML_VALUES)}")
    return "\n".join(out) + "\n"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=toml_files() | st.text(max_size=200))
def test_any_config_file_loads_or_names_its_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "riskmon.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path, env={})
    except ConfigError as exc:
        message = str(exc)
    else:
        message = ""
    if message:  # refused: with one clear message (the key path where there is one)
        return
    # What check-config prints is the same config again.
    assert msgspec.convert(redacted(cfg), type=Config, dec_hook=dec_hook) == cfg


@given(
    name=st.sampled_from(
        [
            "RISKMON_ESTIMATOR__HALFLIFE",
            "RISKMON_RISK__VAR_CONFIDENCE",
            "RISKMON_SERVER__LISTEN",
            "RISKMON_CONNECTORS__SIMULATED__SEED",
            "RISKMON_NOPE",
            "RISKMON_ESTIMATOR__",
            "RISKMON_RISK__BUDGETS",
        ]
    ),
    value=st.text(max_size=40),
)
def test_any_environment_override_applies_or_names_its_error(name: str, value: str) -> None:
    try:
        load_config(env={name: value})
    except ConfigError as exc:
        assert exc.message  # noqa: PT017 - the property: refused with a message


# --- the event types the engine sees, built directly --------------------------------------


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_events_built_in_code_take_any_float(x: float) -> None:
    """Connectors build events in code; what they carry is checked again by the decoder."""
    for event in (
        PriceEvent(ts=T0, instrument="BTC", price=abs(x) if x == x else x),
        PositionEvent(ts=T0, account="a", instrument="BTC", quantity=x),
        AccountEvent(ts=T0, account="a", equity=x),
    ):
        try:
            again = EventDecoder().decode(encode_event(event))
        except (Rejected, msgspec.EncodeError, ValueError):
            continue
        assert again == event
