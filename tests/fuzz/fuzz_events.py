"""Coverage-guided fuzzing (atheris, libFuzzer) of the schema-v1 event decoder.

Every input must either decode to an event or be refused with a :class:`Rejected` of the
bounded reason set; anything else (another exception, a crash) is a finding. The decoder is
fed single messages and newline-delimited batches (the replay path), and every accepted
event must encode and decode back to itself.

Short run (what the test command does): ``python tests/fuzz/fuzz_events.py -runs=20000``.
Longer: ``python tests/fuzz/fuzz_events.py -max_total_time=600 corpus/`` (libFuzzer flags;
a corpus directory keeps what it found interesting between runs).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from monitor.model.events import EventDecoder, Reason, Rejected, encode_event

_decoder = EventDecoder()
_REASONS = frozenset(Reason)


def test_one_input(data: bytes) -> None:
    try:
        event = _decoder.decode(data)
    except Rejected as rej:
        if rej.reason not in _REASONS:
            raise AssertionError(f"unknown reason {rej.reason!r}") from None
    else:
        again = _decoder.decode(encode_event(event))
        if again != event:
            raise AssertionError(f"round trip changed {event!r} into {again!r}")
    events, rejections = _decoder.decode_lines(data)
    for _, refused in rejections:
        if refused.reason not in _REASONS:
            raise AssertionError(f"unknown reason {refused.reason!r}")
    for ev in events:
        if _decoder.decode(encode_event(ev)) != ev:
            raise AssertionError(f"round trip changed {ev!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
