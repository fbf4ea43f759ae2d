"""The stereo timeline, sans-I/O: where caller and assistant audio land, cuts, sealing, lengths."""

from __future__ import annotations

import os

from relay.recording.timeline import LEFT, RIGHT, Fill, Timeline, Write

RATE = 24000
SB = 2


def render(tl: Timeline, ops_log: list, frames: int) -> tuple[bytearray, bytearray]:
    """Apply every instruction to two in-memory channels (what the spool does on disk)."""
    chans = [bytearray(frames * SB), bytearray(frames * SB)]
    for op in ops_log:
        if isinstance(op, Write):
            chans[op.channel][op.frame * SB : op.frame * SB + len(op.data)] = op.data
        else:
            assert isinstance(op, Fill)
            chans[op.channel][op.frame * SB : (op.frame + op.frames) * SB] = bytes(op.frames * SB)
    return chans[0][: frames * SB], chans[1][: frames * SB]


def ms(n: int) -> int:
    return n * 1000


def test_caller_streaming_in_real_time_is_laid_back_to_back() -> None:
    tl = Timeline(RATE, SB)
    ops: list = []
    sent = bytearray()
    t = 0
    jitter = [0, 7, -5, 30, 0, 120, -40, 3] * 50  # ms of network jitter, within the tolerance
    for i, j in enumerate(jitter):
        chunk = os.urandom(960)  # 20 ms
        sent += chunk
        t += 20_000
        place, o = tl.caller(chunk, t + j * 1000)
        ops += o
        if i == 0:
            assert place.frame == 0
    total, o = tl.finish(tl.frame_at(t))
    ops += o
    left, _ = render(tl, ops, total)
    assert bytes(left[: len(sent)]) == bytes(sent)
    assert total == len(sent) // SB


def test_caller_pause_becomes_silence_at_the_right_place() -> None:
    tl = Timeline(RATE, SB)
    ops: list = []
    a, b = os.urandom(48_000), os.urandom(48_000)  # 1 s each
    ops += tl.caller(a, ms(1000))[1]
    place, o = tl.caller(b, ms(4000))  # paused 2 s: ideal start 3.0 s
    ops += o
    assert place.frame == 3 * RATE
    total, o = tl.finish(tl.frame_at(ms(4000)))
    ops += o
    left, _ = render(tl, ops, total)
    assert bytes(left[:48_000]) == a
    assert bytes(left[48_000 : 3 * 48_000]) == bytes(2 * 48_000)
    assert bytes(left[3 * 48_000 :]) == b


def test_caller_faster_than_real_time_is_kept_whole() -> None:
    tl = Timeline(RATE, SB)
    audio = os.urandom(10 * 48_000)  # 10 s sent in 1 s
    ops: list = []
    for i in range(0, len(audio), 48_000):
        ops += tl.caller(audio[i : i + 48_000], ms(100 * (i // 48_000 + 1)))[1]
    total, o = tl.finish(tl.frame_at(ms(1000)))
    ops += o
    assert total == 10 * RATE
    assert bytes(render(tl, ops, total)[0]) == audio


def test_assistant_deltas_queue_from_first_arrival_and_truncate_cuts_at_audio_end_ms() -> None:
    tl = Timeline(RATE, SB)
    ops: list = []
    audio = os.urandom(3 * 48_000)  # 3 s of model audio
    for k, i in enumerate(range(0, len(audio), 4800)):  # 100 ms deltas, 10x faster than real time
        place, o = tl.assistant(audio[i : i + 4800], ms(2000 + 10 * k), "item_1", "resp_1")
        ops += o
        assert place.frame == 2 * RATE + k * 2400
    ops += tl.truncate("item_1", 1250)  # the client played 1.25 s
    (cut,) = tl.take_cuts()
    assert (cut.frame, cut.late_frames, cut.reason) == (2 * RATE + 30_000, 0, "truncate")
    total, o = tl.finish(tl.frame_at(ms(6000)))
    ops += o
    _, right = render(tl, ops, total)
    start = 2 * 48_000
    heard = 1250 * 48
    assert bytes(right[:start]) == bytes(start)
    assert bytes(right[start : start + heard]) == audio[:heard]
    assert bytes(right[start + heard :]) == bytes(len(right) - start - heard)
    assert tl.heard_frames == heard // SB


def test_cancel_cuts_at_the_moment_of_cancellation_when_no_truncate_follows() -> None:
    tl = Timeline(RATE, SB)
    ops: list = []
    audio = os.urandom(2 * 48_000)
    for k, i in enumerate(range(0, len(audio), 4800)):
        ops += tl.assistant(audio[i : i + 4800], ms(1000 + 10 * k), "item_1", "resp_1")[1]
    tl.cancel("resp_1", ms(1500))  # cancelled 0.5 s into playback
    assert tl.take_cuts() == []  # lazily: a truncate may still come
    total, o2 = tl.finish(tl.frame_at(ms(3000)))
    ops += o2
    (cut,) = tl.take_cuts()
    assert cut.reason == "cancel" and cut.frame == tl.frame_at(ms(1500))
    _, right = render(tl, ops, total)
    assert bytes(right[48_000 : 48_000 + 24_000]) == audio[:24_000]
    assert bytes(right[72_000:]) == bytes(len(right) - 72_000)


def test_a_truncate_after_the_cancel_replaces_its_cut() -> None:
    tl = Timeline(RATE, SB)
    ops: list = []
    audio = os.urandom(2 * 48_000)
    for k, i in enumerate(range(0, len(audio), 4800)):
        ops += tl.assistant(audio[i : i + 4800], ms(1000 + 10 * k), "item_1", "resp_1")[1]
    tl.cancel("resp_1", ms(1500))
    ops += tl.truncate("item_1", 503)  # the client played 3 ms more than the relay's cancel moment
    total, o = tl.finish(tl.frame_at(ms(3000)))
    ops += o
    (cut,) = tl.take_cuts()
    assert cut.reason == "truncate"
    _, right = render(tl, ops, total)
    heard = 503 * 48
    assert bytes(right[48_000 : 48_000 + heard]) == audio[:heard]
    assert bytes(right[48_000 + heard :]) == bytes(len(right) - 48_000 - heard)


def test_pending_cancel_is_applied_before_new_audio_and_before_sealing() -> None:
    tl = Timeline(RATE, SB, holdback_ms=1000)
    first = os.urandom(48_000 * 2)
    tl.assistant(first, ms(0), "a", "r1")
    tl.cancel("r1", ms(500))
    assert tl.right_cursor == RATE // 2  # the next response may start right away
    place, ops = tl.assistant(os.urandom(4800), ms(600), "b", "r2")
    assert place.frame == tl.frame_at(ms(600))
    assert ops[0] == Fill(RIGHT, RATE // 2, RATE * 2 - RATE // 2)  # the cut comes first
    tl2 = Timeline(RATE, SB, holdback_ms=1000)
    tl2.assistant(first, ms(0), "a", "r1")
    tl2.cancel("r1", ms(500))
    ops = tl2.seal(tl2.frame_at(ms(1800)))  # sealing up to 0.8 s must not freeze uncut audio
    assert ops[0] == Fill(RIGHT, RATE // 2, RATE * 2 - RATE // 2)


def test_a_new_response_after_a_cut_plays_from_its_arrival() -> None:
    tl = Timeline(RATE, SB)
    ops: list = []
    first = os.urandom(48_000 * 2)
    for k, i in enumerate(range(0, len(first), 4800)):
        ops += tl.assistant(first[i : i + 4800], ms(0 + k), "a", "r1")[1]
    ops += tl.truncate("a", 500)
    second = os.urandom(48_000)
    place, o = tl.assistant(second, ms(1000), "b", "r2")
    ops += o
    assert place.frame == RATE  # not queued behind the cut audio
    total, o = tl.finish(tl.frame_at(ms(2500)))
    ops += o
    _, right = render(tl, ops, total)
    assert bytes(right[:24_000]) == first[:24_000]
    assert bytes(right[24_000:48_000]) == bytes(24_000)
    assert bytes(right[48_000:96_000]) == second


def test_seal_fills_both_channels_and_late_cuts_are_counted() -> None:
    tl = Timeline(RATE, SB, holdback_ms=1000)
    ops = tl.seal(tl.frame_at(ms(5000)))
    assert ops == [Fill(LEFT, 0, 4 * RATE), Fill(RIGHT, 0, 4 * RATE)]
    assert tl.sealed == 4 * RATE
    place, _ = tl.assistant(os.urandom(4800), ms(1000), "x", "r")  # arrived "in the past"
    assert place.frame == tl.sealed  # never written into the sealed region
    tl2 = Timeline(RATE, SB, holdback_ms=1000)
    tl2.assistant(os.urandom(48_000 * 3), 0, "y", "r")
    tl2.seal(tl2.frame_at(ms(3000)))  # sealed up to 2 s
    ops = tl2.truncate("y", 1000)
    (cut,) = tl2.take_cuts()
    assert cut.late_frames == RATE and cut.frames == 2 * RATE
    assert ops == [Fill(RIGHT, 2 * RATE, RATE)]


def test_wav_length_follows_the_session_and_drops_unheard_assistant_audio() -> None:
    tl = Timeline(RATE, SB)
    tl.assistant(os.urandom(48_000 * 5), ms(1000), "i", "r")  # 5 s queued at 1 s
    total, _ = tl.finish(tl.frame_at(ms(3000)))  # the session ended at 3 s
    assert total == 3 * RATE
    assert tl.heard_frames == 2 * RATE


def test_g711_timeline_counts_one_byte_samples_at_8k() -> None:
    tl = Timeline(8000, 1)
    place, _ = tl.caller(b"\x01" * 160, ms(20))
    assert (place.frame, place.frames) == (0, 160)
    assert tl.frame_at(ms(1000)) == 8000
