"""The recorder's cheap paths give the same bytes as the general ones (sans-I/O where possible).

The writer builds a client append's log line from the wire text around the base64 value, the
spool gathers audio and writes it with one ``pwritev``, parts are built in reused buffers: each is
checked here against the reference it replaces, so a format can only change on purpose.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from relay.contracts import SessionInfo
from relay.events import C2U, Dialect, Event, parse_client_frame, parse_upstream_frame
from relay.metrics import RelayMetrics
from relay.recording import Recorder
from relay.recording import eventlog as el
from relay.recording.audioformat import PCM16_24K, PCMU
from relay.recording.spool import SessionSpool, gzip_member, valid_gzip_prefix
from relay.recording.store import LocalStore, PutOptions
from relay.recording.uploader import PartScratch, build_part
from relay.recording.wav import interleave, interleave_into
from relay.recording.writer import SessionWriter
from tests.recording.helpers import session_info
from tests.recording.test_sink_local import local_config

APPEND = "input_audio_buffer.append"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Event log ------------------------------------------------------------------------------------


@pytest.mark.parametrize("converted", ["", "audio/pcmu"])
@pytest.mark.parametrize(
    "pre,post",
    [
        (b'{"type":"input_audio_buffer.append","audio":', b"}"),
        (b'{"type": "input_audio_buffer.append", "audio": ', b"}"),
        (b'{"event_id":"evt_1","type":"input_audio_buffer.append","audio":', b',"x":[1,{"y":2}]}'),
    ],
)
def test_audio_line_equals_the_reference_serialisation(pre: bytes, post: bytes, converted: str) -> None:
    data = os.urandom(960)
    fast, ref = el.EventLog("s"), el.EventLog("s")
    prefix = el.member_prefix("client_to_upstream", APPEND)
    for t_us in (0, 20_000, 1_234_567):
        a = fast.audio_line(t_us, prefix, pre, b"caller", 480, 480, data, post, converted)
        event = pre + el.audio_ref("caller", 480, 480, data, converted_from=converted) + post
        b = ref.line(t_us, "client_to_upstream", APPEND, event)
        assert a == b
        line = orjson.loads(a)
        assert line["event"]["audio"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert fast.head == ref.head and fast.seq == ref.seq == 3


def test_member_prefix_is_what_a_line_holds_between_t_us_and_the_event() -> None:
    log = el.EventLog("s")
    line = log.line(7, "upstream_to_client", 'odd"type', b"{}")
    assert el.member_prefix("upstream_to_client", 'odd"type') in line
    assert orjson.loads(line)["type"] == 'odd"type'
    assert el.member_prefix("relay", "x") == b',"dir":"relay","type":"x","event":'


# Writer: the client append's cheap path ------------------------------------------------------


def _writer(tmp: Path, name: str) -> SessionWriter:
    info = SessionInfo("sess_hot", "t", "k", "m", Dialect.GA)
    w = SessionWriter(info, SessionSpool(tmp / name, 5 * 1024 * 1024))
    w.spool.create()
    w.start_timeline()
    return w


def _feed(w: SessionWriter, texts: list[str]) -> tuple[list[bytes], bytes]:
    from collections import deque

    q: deque[tuple[Any, Any, int]] = deque()
    for k, text in enumerate(texts):
        q.append((parse_client_frame(text, k, 0), None, 20_000 * (k + 1)))
    w.drain(q, len(q))
    w.spool.flush()
    frames = w.timeline.left_end if w.timeline else 0
    return list(w.lines), w.spool.read_segment(0, 0, frames)


AUDIO = os.urandom(960)
A = b64(AUDIO)
APPEND_PRE = '{"type":"input_audio_buffer.append","audio":"'
VARIANTS = {
    "compact": APPEND_PRE + A + '"}',
    "python sdk": json.dumps({"type": APPEND, "audio": A}),
    "event id first": '{"event_id":"evt_1","type":"input_audio_buffer.append","audio":"' + A + '"}',
    "event id last": APPEND_PRE + A + '","event_id":"e"}',
    "escaped slash": json.dumps({"type": APPEND, "audio": A}).replace("/", "\\/"),
    "duplicate key": APPEND_PRE + b64(os.urandom(960)) + '","audio":"' + A + '"}',
    "nested key first": '{"type":"input_audio_buffer.append","x":{"audio":"QUJD"},"audio":"' + A + '"}',
    "pretty": json.dumps({"audio": A, "type": APPEND}, indent=2),
    "trailing space": APPEND_PRE + A + '"} ',
    "invalid base64": APPEND_PRE + '!!!!"}',
    "lenient base64": APPEND_PRE + A[:8] + "\\n" + A[8:] + '"}',
    "torn sample": APPEND_PRE + b64(os.urandom(961)) + '"}',
    "empty": APPEND_PRE + '"}',
    "not a string": '{"type":"input_audio_buffer.append","audio":12}',
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_client_append_cheap_path_gives_the_general_paths_bytes(tmp_path: Path, name: str) -> None:
    texts = [VARIANTS[name], VARIANTS["compact"], VARIANTS[name]]
    fast = _writer(tmp_path, "fast")
    general = _writer(tmp_path, "general")
    general._caller_fast = lambda ev, t_us: False  # type: ignore[method-assign]
    lines_fast, audio_fast = _feed(fast, texts)
    lines_general, audio_general = _feed(general, texts)
    assert lines_fast == lines_general
    assert audio_fast == audio_general
    assert fast.log.head == general.log.head
    for line, text in zip(lines_fast[-3:], texts, strict=True):
        obj = orjson.loads(line)
        payload = orjson.loads(text)
        ref = obj["event"]["audio"]
        if isinstance(ref, dict):  # the audio became a reference, everything else as sent
            assert {k: v for k, v in obj["event"].items() if k != "audio"} == {
                k: v for k, v in payload.items() if k != "audio"
            }
            decoded = base64.b64decode(payload["audio"])
            assert ref["sha256"] == hashlib.sha256(decoded).hexdigest() and ref["bytes"] == len(decoded)
            laid = audio_fast[2 * ref["offset"] : 2 * (ref["offset"] + ref["duration"])]
            assert laid == decoded[: 2 * ref["duration"]]
        else:
            assert obj["event"] == payload  # not audio the relay could read: kept as it was


DELTA = os.urandom(4800)
D = b64(DELTA)
DELTA_HEAD = (
    '{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1",'
)
DELTAS = {
    "server form": DELTA_HEAD + '"output_index":0,"content_index":0,"delta":"' + D + '"}',
    "beta name": DELTA_HEAD.replace("output_audio", "audio") + '"delta":"' + D + '"}',
    "ids after": '{"type":"response.output_audio.delta","delta":"' + D + '","response_id":"r","item_id":"i"}',
    "no response id": '{"type":"response.output_audio.delta","item_id":"i","delta":"' + D + '"}',
    "escaped slash": (DELTA_HEAD + '"delta":"' + D + '"}').replace("/", "\\/"),
    "escaped id": DELTA_HEAD.replace("item_1", "it\\u0065m") + '"delta":"' + D + '"}',
    "nested first": '{"type":"response.output_audio.delta","x":[1],"item_id":"i","response_id":"r","delta":"'
    + D
    + '"}',
    "pretty": json.dumps(
        {"type": "response.output_audio.delta", "item_id": "i", "response_id": "r", "delta": D}, indent=1
    ),
    "torn sample": DELTA_HEAD + '"delta":"' + b64(os.urandom(4801)) + '"}',
    "not base64": DELTA_HEAD + '"delta":"%%%%"}',
}


@pytest.mark.parametrize("name", sorted(DELTAS))
def test_output_delta_cheap_path_gives_the_general_paths_bytes(tmp_path: Path, name: str) -> None:
    texts = [DELTAS[name], DELTAS["server form"], DELTAS[name]]
    fast, general = _writer(tmp_path, "fast"), _writer(tmp_path, "general")
    general._delta_fast = lambda ev, t_us: False  # type: ignore[method-assign]
    for w in (fast, general):
        for k, text in enumerate(texts):
            w.event(parse_upstream_frame(text, k, 0), 100_000 * (k + 1))
        w.spool.flush()
    assert fast.lines == general.lines
    frames = fast.timeline.right_end if fast.timeline else 0
    assert fast.spool.read_segment(1, 0, frames) == general.spool.read_segment(1, 0, frames)
    for line, text in zip(fast.lines[-3:], texts, strict=True):
        obj, payload = orjson.loads(line), orjson.loads(text)
        ref = obj["event"]["delta"]
        if isinstance(ref, dict):
            assert {k: v for k, v in obj["event"].items() if k != "delta"} == {
                k: v for k, v in payload.items() if k != "delta"
            }
            assert ref["sha256"] == hashlib.sha256(base64.b64decode(payload["delta"])).hexdigest()
        else:
            assert obj["event"] == payload


def test_the_server_delta_form_takes_the_cheap_path(tmp_path: Path) -> None:
    w = _writer(tmp_path, "w")
    assert w._delta_fast(parse_upstream_frame(DELTAS["server form"], 0, 0), 100_000) is True
    assert w._delta_fast(parse_upstream_frame(DELTAS["ids after"], 1, 0), 200_000) is False


@pytest.mark.parametrize("name", ["compact", "python sdk", "event id first"])
def test_the_usual_client_forms_take_the_cheap_path(tmp_path: Path, name: str) -> None:
    w = _writer(tmp_path, "w")
    ev = parse_client_frame(VARIANTS[name], 0, 0)
    assert w._caller_fast(ev, 20_000) is True
    assert w._caller_fast(parse_client_frame(VARIANTS["event id last"], 1, 0), 40_000) is False


def test_a_format_change_sends_audio_through_conversion(tmp_path: Path) -> None:
    w = _writer(tmp_path, "w")  # the WAV is PCM16 24 kHz
    session = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    w.event(
        parse_client_frame(orjson.dumps({"type": "session.update", "session": session}).decode(), 0, 0), 0
    )
    assert w._caller_direct is False
    from collections import deque

    q: deque[tuple[Any, Any, int]] = deque([(parse_client_frame(VARIANTS["compact"], 1, 0), None, 20_000)])
    w.drain(q, 1)
    ref = orjson.loads(w.lines[-1])["event"]["audio"]
    assert ref["converted"] is True and ref["format"] == "audio/pcmu" and ref["duration"] == 960 * 3


# Spool, interleaving, parts ------------------------------------------------------------------


def test_spool_gathers_writes_and_keeps_their_order(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", 4000)  # 1000 frames a segment (PCM16 stereo)
    spool.create()
    spool.set_format(PCM16_24K)
    model = [bytearray(4000), bytearray(4000)]

    def write(ch: int, frame: int, data: bytes) -> None:
        spool.write(ch, frame, data)
        model[ch][2 * frame : 2 * frame + len(data)] = data

    for k in range(30):  # contiguous, across the first segment boundary
        write(0, 50 * k, os.urandom(100))
    write(0, 100, os.urandom(50))  # elsewhere, over audio still gathered: the later write wins
    write(1, 990, os.urandom(40))  # a write that straddles two segments
    spool.fill(1, 995, 3)
    model[1][2 * 995 : 2 * 998] = bytes(6)
    spool.flush()
    for ch in (0, 1):
        got = spool.read_segment(ch, 0, 1000) + spool.read_segment(ch, 1, 1000)
        assert got == bytes(model[ch])


def test_g711_silence_is_its_own_byte(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", 2000)
    spool.create()
    spool.set_format(PCMU)
    spool.write(0, 0, b"\x01" * 10)
    spool.fill(0, 10, 20)
    spool.flush()
    assert spool.read_segment(0, 0, 40) == b"\x01" * 10 + b"\xff" * 30  # gap and tail: μ-law silence


@pytest.mark.parametrize("sb,fmt", [(2, PCM16_24K), (1, PCMU)])
@pytest.mark.parametrize("frames", [0, 1, 7, 131_072 + 5])
def test_interleave_into_equals_interleave(sb: int, fmt: Any, frames: int) -> None:
    left, right = os.urandom(frames * sb), os.urandom(frames * sb)
    out = bytearray(b"HDR" + bytes(2 * frames * sb))
    interleave_into(out, 3, bytearray(left) + b"spare", bytearray(right) + b"spare", frames * sb, sb)
    assert bytes(out) == b"HDR" + interleave(left, right, fmt)


def test_parts_are_built_in_reused_memory(tmp_path: Path) -> None:
    spool = SessionSpool(tmp_path / "s", 4000)
    spool.create()
    spool.set_format(PCM16_24K)
    audio = [os.urandom(2 * 3000), os.urandom(2 * 3000)]
    for ch in (0, 1):
        spool.write(ch, 0, audio[ch])
    spool.flush()
    scratch = PartScratch(4000)
    first = build_part(spool, scratch, 1, 1000, b"")
    assert first == interleave(audio[0][2000:4000], audio[1][2000:4000], PCM16_24K)
    second = build_part(spool, scratch, 2, 1000, b"")
    assert second is first  # the same memory, now holding segment 2
    assert second == interleave(audio[0][4000:6000], audio[1][4000:6000], PCM16_24K)
    head = build_part(spool, scratch, 0, 1000, b"RIFF....")
    assert head is not first and head == b"RIFF...." + interleave(audio[0][:2000], audio[1][:2000], PCM16_24K)
    assert build_part(spool, scratch, 2, 10, b"") == interleave(
        audio[0][4000:4020], audio[1][4000:4020], PCM16_24K
    )


def test_log_members_are_one_gzip_stream() -> None:
    parts = [b'{"seq":%d}\n' % k * 50 for k in range(3)]
    blob = b"".join(gzip_member(p) for p in parts)
    assert gzip.decompress(blob) == b"".join(parts)
    assert valid_gzip_prefix(blob + gzip_member(parts[0])[:-3]) == (len(blob), b"".join(parts))


async def test_local_store_digest_and_multipart(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "rec")
    upload = await store.create_multipart("a/b.bin", PutOptions())
    chunks = [os.urandom(300_000), bytearray(os.urandom(200_000)), os.urandom(5)]
    for n, data in enumerate(chunks, 1):
        await store.upload_part("a/b.bin", upload, n, data)
    await store.complete_multipart("a/b.bin", upload, [(3, ""), (1, ""), (2, "")])
    whole = b"".join(bytes(c) for c in chunks)
    assert await store.get("a/b.bin") == whole
    assert await store.digest("a/b.bin") == (len(whole), hashlib.sha256(whole).hexdigest())


# The sink and the writer loop ----------------------------------------------------------------


async def test_a_backlog_is_drained_in_bounded_steps_and_lines_follow_their_audio(tmp_path: Path) -> None:
    rec = await Recorder.create(local_config(tmp_path), RelayMetrics(CollectorRegistry()), relay_version="t")
    rec._writer.cancel()  # type: ignore[union-attr]  # noqa: SLF001 - the test drives the writer
    info = session_info()
    sink = rec.open(info, None)
    audio = [os.urandom(960) for _ in range(300)]
    for k, chunk in enumerate(audio):
        assert sink.record_event(parse_client_frame(APPEND_PRE + b64(chunk) + '"}', k, 0), 20_000 * (k + 1))
    assert sink.process(32) is True and sink.queue_depth == 300 - 32
    await rec._round(time.monotonic(), None)  # noqa: SLF001 - one round: the rest, then a flush
    assert sink.queue_depth == 0
    lines = gzip.decompress((sink.spool.path / "events.jsonl.gz").read_bytes()).splitlines()
    refs = [orjson.loads(x)["event"]["audio"] for x in lines if b'"input_audio_buffer.append"' in x]
    assert len(refs) == 300
    left = sink.spool.read_segment(0, 0, refs[-1]["offset"] + refs[-1]["duration"])
    for ref, chunk in zip(refs, audio, strict=True):  # every referenced frame is on disk
        assert left[2 * ref["offset"] : 2 * (ref["offset"] + ref["duration"])] == chunk
    sink.close(_summary())
    await rec.aclose()


async def test_flushes_are_spread_over_the_rounds_of_a_sync_interval(tmp_path: Path) -> None:
    cfg = local_config(tmp_path)
    cfg.fsync_interval = 1.0
    rec = await Recorder.create(cfg, RelayMetrics(CollectorRegistry()), relay_version="t")
    rec._writer.cancel()  # type: ignore[union-attr]  # noqa: SLF001 - the test drives the writer
    sinks = [rec.open(session_info(), None) for _ in range(20)]
    flushed: list[list[int]] = []
    for phase in range(10):
        for sink in sinks:
            sink.record_event(parse_client_frame(APPEND_PRE + A + '"}', phase, 0), 20_000 * (phase + 1))
        await rec._round(time.monotonic(), phase)  # noqa: SLF001
        flushed.append([k for k, sink in enumerate(sinks) if sink.spool.events_size])
        for sink in sinks:
            sink.spool.events_size = 0  # seen: count only this round's flushes next time
    assert sorted(k for ks in flushed for k in ks) == list(range(20))  # each once per interval
    assert max(len(ks) for ks in flushed) <= 3  # and no round takes them all
    await rec.aclose()


def _summary() -> Any:
    from relay.contracts import SessionSummary

    return SessionSummary(
        ended_at=time.time(),
        duration_s=6.0,
        client_close_code=1000,
        client_close_reason="",
        upstream_close_code=1000,
        upstream_close_reason="",
        outcome="ok",
        events_client_to_upstream=300,
        events_upstream_to_client=0,
    )


def test_upstream_delta_general_path_lays_and_references_its_audio(tmp_path: Path) -> None:
    w = _writer(tmp_path, "w")
    data = os.urandom(4800)
    text = orjson.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "e",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": b64(data),
        }
    ).decode()
    w.event(parse_upstream_frame(text, 0, 0), 1_000_000)
    line = orjson.loads(w.lines[-1])
    assert line["event"]["delta"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert {k: v for k, v in line["event"].items() if k != "delta"} == {
        k: v for k, v in orjson.loads(text).items() if k != "delta"
    }
    w.spool.flush()
    assert w.spool.read_segment(1, 0, 24_000 + 2400)[48_000:] == data


def test_direction_label_and_prefix_cache_agree() -> None:
    ev = Event(C2U, APPEND, "{}", 0, 0)
    assert el.member_prefix(ev.direction.label, APPEND) == el.member_prefix("client_to_upstream", APPEND)


def test_a_short_write_to_the_log_leaves_no_torn_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills part-way through a member (made to happen: no full disk here)."""
    import relay.recording.spool as spool_module

    spool = SessionSpool(tmp_path / "s", 4000)
    spool.create()
    first = gzip_member(b'{"seq":0}\n')
    spool.append_events(first)
    real_write = os.write

    def half(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(spool_module.os, "write", half)
    with pytest.raises(OSError):
        spool.append_events(gzip_member(b'{"seq":1}\n' * 100))
    monkeypatch.undo()
    assert (tmp_path / "s" / "events.jsonl.gz").read_bytes() == first and spool.events_size == len(first)
    spool.close_files()


def test_isal_members_read_as_standard_gzip_beside_zlib_members() -> None:
    """The log is deflated by ISA-L; the standard library reads it, and a spool left by a relay
    that used zlib (an upgrade) holds both kinds of member in one log."""
    import zlib

    from isal import isal_zlib

    lines = b"".join(b'{"seq":%d,"hash":"%064x"}\n' % (k, k * 7919) for k in range(500))
    member = gzip_member(lines)
    assert member == isal_zlib.compress(lines, 1, wbits=31)  # ISA-L's level 1, not zlib's
    assert gzip.decompress(member) == lines
    assert zlib.decompress(member, wbits=31) == lines
    plain = zlib.compress(lines, 1, wbits=31)  # a log may hold members from either deflater
    assert valid_gzip_prefix(member + plain) == (len(member) + len(plain), lines * 2)


def _pauses(lines: list[bytes]) -> list[tuple[int, int]]:
    return [
        (obj["event"]["frame"], obj["event"]["frames"])
        for obj in map(orjson.loads, lines)
        if obj["type"] == "recording.pause"
    ]


def test_a_late_caller_chunk_logs_the_pause_it_opens(tmp_path: Path) -> None:
    """Silence the left channel gets between two pieces of caller audio is logged where it went,
    by both paths alike, measured from the caller's last audio even when sealing filled part of it."""
    from collections import deque

    logs = []
    for name in ("lean", "general"):
        w = _writer(tmp_path, name)
        if name == "general":
            w._caller_fast = lambda ev, t_us: False  # type: ignore[method-assign]
        q: deque[tuple[Any, Any, int]] = deque()
        for k, t_us in enumerate((20_000, 40_000, 600_000, 620_000)):  # 520 ms late: a pause
            q.append((parse_client_frame(VARIANTS["compact"], k, 0), None, t_us))
        w.drain(q, len(q))
        w.seal(5_000_000)  # nothing from the caller for seconds: sealing fills the left channel
        q.append((parse_client_frame(VARIANTS["compact"], 9, 0), None, 5_020_000))
        q.append((parse_client_frame(VARIANTS["compact"], 10, 0), None, 5_040_000))
        w.drain(q, len(q))
        logs.append(list(w.lines))
        assert w.timeline is not None and w.timeline.caller_frames == 6 * 480
    assert logs[0] == logs[1]
    lean = logs[0]
    # 2 chunks end at frame 960; the third ends where it arrived (600 ms), the fifth at 5.02 s.
    assert _pauses(lean) == [(960, 14_400 - 480 - 960), (14_400 + 480, 120_480 - 480 - 14_400 - 480)]
    kinds = [orjson.loads(x)["type"] for x in lean]
    assert kinds.index("recording.pause") == kinds.index(APPEND) + 2  # before the chunk it precedes
