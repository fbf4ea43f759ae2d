"""The C accelerator (``relay.recording._speedups``) writes exactly what the Python paths write.

Generated sessions of client appends in the forms clients send (and odd ones), with jitter, late
chunks and long pauses, in PCM16 and G.711, are recorded twice: with the accelerator and with its
run disabled. Lines, chain head, audio and the timeline's counters must be identical.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.contracts import SessionInfo
from relay.events import Dialect, parse_client_frame
from relay.recording import accel
from relay.recording.spool import SessionSpool
from relay.recording.writer import SessionWriter

built = pytest.mark.skipif(accel.caller_run is None, reason="the accelerator is not built here")

FORMS = {
    "compact": '{{"type":"input_audio_buffer.append","audio":"{a}"}}',
    "python sdk": '{{"type": "input_audio_buffer.append", "audio": "{a}"}}',
    "event id": '{{"event_id":"evt_{k}","type":"input_audio_buffer.append","audio":"{a}"}}',
    "audio first": '{{"audio":"{a}","type":"input_audio_buffer.append"}}',
    "spaced": '{{ "type": "input_audio_buffer.append", "audio": "{a}" }}',
    "space before key": '{{"type":"input_audio_buffer.append", "audio":"{a}"}}',
    "escaped slash": '{{"type":"input_audio_buffer.append","audio":"{e}"}}',
    "unicode id": '{{"event_id":"é{k}","type":"input_audio_buffer.append","audio":"{a}"}}',
    "nested before": '{{"type":"input_audio_buffer.append","x":{{"y":1}},"audio":"{a}"}}',
    "array before": '{{"type":"input_audio_buffer.append","x":[1],"audio":"{a}"}}',
    "key in a value": '{{"type":"input_audio_buffer.append","x":"\\"audio\\":\\"","audio":"{a}"}}',
    "escaped key": '{{"type":"input_audio_buffer.append","x\\"audio":"{a}"}}',
    "duplicate": '{{"type":"input_audio_buffer.append","audio":"QUJD","audio":"{a}"}}',
    "torn": '{{"type":"input_audio_buffer.append","audio":"{t}"}}',
    "bad base64": '{{"type":"input_audio_buffer.append","audio":"{a}!"}}',
    "padded": '{{"type":"input_audio_buffer.append","audio":"{p}"}}',
    "not last": '{{"type":"input_audio_buffer.append","audio":"{a}","event_id":"e"}}',
    "commit": '{{"type":"input_audio_buffer.commit"}}',
}
USUAL = ["compact", "python sdk", "event id"]


def _text(form: str, k: int, chunk: bytes) -> str:
    a = base64.b64encode(chunk).decode()
    return FORMS[form].format(
        a=a,
        e=a.replace("/", "\\/"),
        k=k,
        t=base64.b64encode(chunk + b"\x01").decode(),
        p=base64.b64encode(chunk[:-1] if len(chunk) % 3 == 0 else chunk).decode(),
    )


def _writer(tmp: Path, name: str, fmt: str, accelerated: bool) -> SessionWriter:
    w = SessionWriter(SessionInfo("sess_acc", "t", "k", "m", Dialect.GA), SessionSpool(tmp / name, 1 << 20))
    w.spool.create()
    if not accelerated:
        w._caller_run = lambda run, q, n: 0  # type: ignore[method-assign]
    if fmt != "pcm16":
        session = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
        update = orjson.dumps({"type": "session.update", "session": session}).decode()
        w.drain(deque([(parse_client_frame(update, 0, 0), None, 0)]), 1)
    return w


def _record(w: SessionWriter, items: list[tuple[str, int, bytes, int]], batches: list[int]) -> Any:
    q: deque[tuple[Any, Any, int]] = deque()
    for k, (form, t_us, chunk, relay_line) in enumerate(items):
        if relay_line:
            q.append(("policy.action", {"k": k}, t_us))
        q.append((parse_client_frame(_text(form, k, chunk), k, 0), None, t_us))
    for n in batches:
        if q:
            w.drain(q, min(n, len(q)))
    if q:
        w.drain(q, len(q))
    w.spool.flush()
    tl = w.start_timeline()
    left = w.spool.read_segment(0, 0, tl.left_end) if tl.left_end else b""
    return b"".join(w.lines), w.log.head, w.log.seq, left, tl.left_end, tl.caller_frames, w.last_t_us


@st.composite
def sessions(draw: Any) -> tuple[str, list[tuple[str, int, bytes, int]], list[int]]:
    fmt = draw(st.sampled_from(["pcm16", "pcmu"]))
    sb = 2 if fmt == "pcm16" else 1
    rate = 24_000 if fmt == "pcm16" else 8_000
    n = draw(st.integers(1, 40))
    items = []
    t_us = 0
    for _ in range(n):
        form = draw(st.sampled_from(USUAL * 6 + sorted(FORMS)))
        frames = draw(st.sampled_from([1, 3, 160, 480]))
        chunk = os.urandom(frames * sb)
        step = draw(st.sampled_from([frames * 1_000_000 // rate, 0, 5_000, 300_000, 1_500_000]))
        t_us += step + draw(st.integers(0, 2_000))
        items.append((form, t_us, chunk, draw(st.integers(0, 9)) == 0))
    batches = draw(st.lists(st.integers(1, 12), max_size=8))
    return fmt, items, batches


@built
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions())
def test_the_accelerator_writes_what_the_python_paths_write(tmp_path_factory: Any, case: Any) -> None:
    fmt, items, batches = case
    tmp = tmp_path_factory.mktemp("acc")
    fast = _record(_writer(tmp, "c", fmt, True), items, batches)
    python = _record(_writer(tmp, "py", fmt, False), items, batches)
    assert fast == python


@built
def test_the_usual_forms_go_through_the_accelerator(tmp_path: Path) -> None:
    w = _writer(tmp_path, "w", "pcm16", True)
    w.start_timeline()
    calls: list[int] = []
    run = w._caller_run

    def counting(r: Any, q: Any, n: int) -> int:
        k = run(r, q, n)
        calls.append(k)
        return k

    w._caller_run = counting  # type: ignore[method-assign]
    items = [(form, 20_000 * (k + 1), os.urandom(960), 0) for k, form in enumerate(USUAL * 4)]
    _record(w, items, [len(items)])
    assert sum(calls) == len(items)  # none fell back to the Python paths


@built
def test_the_accelerator_refuses_a_bad_head() -> None:
    assert accel.caller_run is not None
    with pytest.raises(ValueError):
        accel.caller_run(deque(), 1, b"short", 0, b",", 0, 0, 24_000, b"\0\0", 24_000)


def test_the_accelerator_is_built_where_the_tests_run() -> None:
    """CI builds it (``make test`` installs a C compiler): a silent fallback would go unnoticed."""
    if os.environ.get("RELAY_RECORDER_PURE_PYTHON") == "1":
        pytest.skip("the Python paths were asked for")
    assert accel.caller_run is not None
