"""The recorder's part-by-part bench (``bench.recording_parts``), run small: it must keep switching
off what it says it does, and put it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import recording_parts as rp
from relay.recording import eventlog, spool, writer
from relay.recording.spool import SessionSpool


@pytest.mark.parametrize(
    ("part", "owner", "name"),
    [
        ("decode", writer, "b64decode"),
        ("sha256", eventlog, "_sha256"),
        ("deflate", spool, "isal_zlib"),
        ("audio-writes", SessionSpool, "flush_channel"),
    ],
)
def test_each_part_is_switched_off_only_inside_its_context(part: str, owner: object, name: str) -> None:
    before = getattr(owner, name)
    with rp.PARTS[part]():
        assert getattr(owner, name) is not before
    assert getattr(owner, name) is before


def test_a_small_replay_reports_both_halves(tmp_path: Path) -> None:
    row = rp.measure("deflate", sessions=4, seconds=3.0, tmp=tmp_path)
    assert row["part"] == "deflate"
    assert row["control_us_per_event"] > 0 and row["without_us_per_event"] > 0
    assert -1 < row["share"] < 1
