"""The recording end to end: the official SDK through the relay, the simulator upstream, SeaweedFS.

A client that behaves like a real voice app (a microphone streaming 20 ms chunks in real time, a
player that plays the model's audio at real-time rate and truncates it on barge-in) talks to the
relay; the recording in S3 must be the call as that client lived it.
"""

from __future__ import annotations

import array
import asyncio
import base64
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from openai import AsyncOpenAI

from relay.recording import audit
from relay.recording.s3 import S3Store
from relay.recording.verify import verify_dir
from relay.recording.wav import parse_header, split
from relay.sim import SimConfig, SimServer
from tests.recording.conftest import s3_recording_config
from tests.recording.helpers import event_lines
from tests.support.audio import utterance_pcm16
from tests.support.relay import TEST_KEY, RelayProcess, base_config, running_relay, write_policies
from tests.support.seaweed import KMS_KEY_ID, SeaweedFS

SIM_KEY = "sk-sim-recording-upstream"
CHUNK = 960  # 20 ms of PCM16 24 kHz
REPLY = "The weather in Paris is sunny and mild today, with a light breeze from the west this afternoon."


def noise_floor(n: int) -> bytes:
    """A quiet microphone (about -80 dBFS): never speech for VAD, never identical to silence."""
    rnd = random.Random(n)
    return array.array("h", [rnd.randint(-3, 3) for _ in range(n // 2)]).tobytes()


class Microphone:
    """Streams 20 ms chunks in real time on an absolute schedule; ``say`` queues speech."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.sent = bytearray()
        self.queue = bytearray()
        self.running = True
        self.said_at: list[int] = []  # byte offsets in ``sent`` where each utterance began
        self.max_late = 0.0
        """The longest a chunk went out after its time. Catching up sends faster than real time,
        which by design pushes the recording's left channel ahead of the clock by up to this
        much (nothing the client sent is dropped); on a starved test machine it is not 0."""

    def say(self, audio: bytes) -> None:
        self.said_at.append(len(self.sent) + len(self.queue))
        self.queue += audio

    async def run(self) -> None:
        start = time.monotonic()
        k = 0
        while self.running:
            k += 1
            await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
            self.max_late = max(self.max_late, time.monotonic() - (start + k * 0.02))
            if self.queue:
                chunk = bytes(self.queue[:CHUNK]).ljust(CHUNK, b"\0")
                del self.queue[:CHUNK]
            else:
                chunk = noise_floor(CHUNK)
            await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
            self.sent += chunk


class Player:
    """Plays each item's audio in real time from when it arrives; truncates on barge-in."""

    def __init__(self) -> None:
        self.received: dict[str, bytearray] = {}
        self.order: list[str] = []
        self.play_start: dict[str, float] = {}
        self.playing = ""
        self.playback_end = 0.0
        self.truncated: dict[str, int] = {}

    def delta(self, item: str, data: bytes) -> None:
        now = time.monotonic()
        if item not in self.received:
            self.received[item] = bytearray()
            self.order.append(item)
            self.play_start[item] = max(now, self.playback_end)
            self.playback_end = self.play_start[item]
            self.playing = item
        self.received[item] += data
        self.playback_end += len(data) / 48000

    def barge_in(self) -> tuple[str, int] | None:
        now = time.monotonic()
        if not self.playing or now >= self.playback_end:
            return None
        item = self.playing
        played = int((now - self.play_start[item]) * 1000)
        self.truncated[item] = played
        self.playback_end = now
        self.playing = ""
        return item, played


async def s3_objects(store: S3Store, session_id: str, tmp: Path, within: float = 60.0) -> Path:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        loc = await audit.find_session(store, "calls", session_id)
        if loc is not None and loc.key("manifest.json") in await store.list_keys(loc.folder + "/"):
            out = tmp / f"fetched-{session_id}"
            await audit.fetch(store, loc, out)
            return out
        await asyncio.sleep(0.2)
    raise AssertionError(f"no recording of {session_id} in S3 after {within}s")


def channels(folder: Path) -> tuple[bytes, bytes, int]:
    wav = (folder / "audio.wav").read_bytes()
    h = parse_header(wav)
    left, right = split(wav[h.data_offset :], h.fmt)
    return left, right, h.frames


async def test_sdk_call_with_barge_in_is_recorded_as_heard(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    s3cfg = s3_recording_config(tmp_path, seaweedfs, bucket).s3
    recording = {
        "enabled": True,
        "sink": "s3",
        "spool_dir": str(tmp_path / "spool"),
        "fsync_interval": 0.2,
        "s3": {
            "bucket": bucket,
            "prefix": "calls",
            "endpoint_url": seaweedfs.endpoint,
            "addressing_style": "path",
            "sse": "aws:kms",
            "kms_key_id": KMS_KEY_ID,
        },
    }
    policies = {"acme": "recording:\n  retention: {mode: GOVERNANCE, days: 1}\n"}
    # Half real time: the answer is still being generated when the caller talks over it.
    async with SimServer(SimConfig(api_key=SIM_KEY, pace=0.5, fixed_reply=REPLY)) as sim:
        sim.script_transcripts("What is the weather in Paris today?", "Stop, thank you.")
        async with running_relay(tmp_path, upstream=sim, policies=policies, recording=recording) as relay:
            client = AsyncOpenAI(api_key=TEST_KEY, websocket_base_url=relay.ws_base)
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "audio": {
                            "input": {
                                "turn_detection": {
                                    "type": "server_vad",
                                    "interrupt_response": True,
                                    "silence_duration_ms": 500,  # no turn ends between words
                                },
                                "transcription": {"model": "gpt-4o-mini-transcribe"},
                            }
                        },
                    }
                )
                mic = Microphone(conn.send)
                player = Player()
                mic_task = asyncio.create_task(mic.run())
                first = utterance_pcm16("what is the weather in Paris today", 300, 900)
                barge = utterance_pcm16("stop thank you", 300, 900)
                mic.say(first)
                statuses: list[str] = []
                barge_scheduled = False
                async with asyncio.timeout(40):
                    async for event in conn:
                        if event.type == "error":
                            raise AssertionError(event)
                        if event.type == "response.output_audio.delta":
                            player.delta(event.item_id, base64.b64decode(event.delta))
                            if not barge_scheduled:  # talk over the answer 0.8 s into playback
                                barge_scheduled = True
                                asyncio.get_running_loop().call_later(0.8, mic.say, barge)
                        elif event.type == "input_audio_buffer.speech_started":
                            cut = player.barge_in()
                            if cut is not None:
                                await conn.send(
                                    {
                                        "type": "conversation.item.truncate",
                                        "item_id": cut[0],
                                        "content_index": 0,
                                        "audio_end_ms": cut[1],
                                    }
                                )
                        elif event.type == "response.done":
                            statuses.append(event.response.status or "")
                            if event.response.status == "completed" and "cancelled" in statuses:
                                break
                await asyncio.sleep(max(0.0, player.playback_end - time.monotonic()) + 0.3)
                mic.running = False
                await mic_task
        assert statuses == ["cancelled", "completed"], statuses
        assert len(player.truncated) == 1
    store = await S3Store.open(s3cfg)
    try:
        # The bucket is this test's own: its one session folder is the call's.
        (date_dir,) = await store.list_dirs("calls/tenant=acme/")
        (session_dir,) = await store.list_dirs(date_dir)
        folder = await s3_objects(store, session_dir.rstrip("/").rsplit("session=", 1)[1], tmp_path)
        retention = await store.retention(f"{session_dir}audio.wav")
        assert retention is not None and retention[0] == "GOVERNANCE"
    finally:
        await store.aclose()

    report = verify_dir(folder)
    assert report.ok, report.problems
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    assert (
        manifest["complete"] is True and manifest["tenant"] == "acme" and manifest["model"] == "gpt-realtime"
    )
    assert manifest["client"]["user_agent"].startswith("AsyncOpenAI/Python")
    left, right, frames = channels(folder)
    # Right: what the client heard, up to each truncation point, silence elsewhere.
    item1, item2 = player.order
    heard1 = bytes(player.received[item1][: player.truncated[item1] * 48])
    heard2 = bytes(player.received[item2])
    assert len(heard1) < len(player.received[item1])
    p1 = right.find(heard1[:4800])
    p2 = right.find(heard2[:4800], p1 + len(heard1))  # both answers say the same words
    assert 0 <= p1 < p2
    assert right[p1 : p1 + len(heard1)] == heard1
    assert right[p2 : p2 + len(heard2)] == heard2
    rest = bytearray(right)
    rest[p1 : p1 + len(heard1)] = bytes(len(heard1))
    rest[p2 : p2 + len(heard2)] = bytes(len(heard2))
    assert bytes(rest) == bytes(len(rest))
    # Left: byte-identical to everything the microphone sent, silence before it. Where the caller's
    # audio reached the relay late (a starved machine: more than the pause tolerance) the left
    # channel has silence in it, and the log says where (``recording.pause``): without those
    # stretches it is exactly what was sent.
    pauses = [
        (e["event"]["frame"], e["event"]["frames"])
        for e in event_lines(folder)
        if e["type"] == "recording.pause"
    ]
    caller = bytearray(left)
    for frame, n in reversed(pauses):
        del caller[2 * frame : 2 * (frame + n)]
    sent = bytes(mic.sent)
    off = caller.find(sent[: CHUNK * 10])
    assert off >= 0 and caller[off : off + len(sent)] == sent, pauses
    assert caller[:off] == bytes(off) and caller[off + len(sent) :] == bytes(len(caller) - off - len(sent))
    # Audio that arrived late and then caught up runs ahead of the clock by up to the lateness:
    # WAV length = session length (±50 ms) for a caller that kept time.
    ahead = mic.max_late + sum(n for _, n in pauses) / 24000
    assert abs(frames / 24000 - manifest["duration_seconds"]) < 0.05 + ahead, (mic.max_late, pauses)
    # The two channels line up: the assistant stops where the caller's barge-in speech begins.
    onset = off + mic.said_at[1]  # in the caller's own audio; on the left channel after pauses
    for frame, n in pauses:
        if 2 * frame <= onset:
            onset += 2 * n
    onset = onset // 2 + 300 * 24  # utterance lead-in is 300 ms of silence
    cut_at = (p1 + len(heard1)) // 2
    assert -ahead * 24000 <= cut_at - onset < 0.3 * 24000, ((cut_at - onset) / 24000, ahead)


async def test_relay_sigkill_mid_session_restart_uploads_the_spool(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    async with SimServer(SimConfig(api_key=SIM_KEY)) as sim:
        write_policies(tmp_path / "policies")
        cfg = base_config(
            tmp_path,
            recording={
                "enabled": True,
                "sink": "s3",
                "spool_dir": str(tmp_path / "spool"),
                "fsync_interval": 0.2,
                "s3": {
                    "bucket": bucket,
                    "prefix": "calls",
                    "endpoint_url": seaweedfs.endpoint,
                    "addressing_style": "path",
                },
            },
        )
        cfg["upstream"] = {"url": sim.url, "api_key": SIM_KEY}
        proc = RelayProcess(cfg, tmp_path).start()
        sent = bytearray()
        try:
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(
                    f"{proc.url}?model=gpt-realtime", headers={"Authorization": f"Bearer {TEST_KEY}"}
                )
                assert (await ws.receive_json())["type"] == "session.created"
                session_id = ws._response.headers["X-Relay-Session-Id"]  # noqa: SLF001
                start = time.monotonic()
                for k in range(1, 150):  # 3 s of microphone in real time
                    await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
                    chunk = os.urandom(CHUNK)
                    await ws.send_json(
                        {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
                    )
                    sent += chunk
                await asyncio.sleep(1.2)  # the relay spooled and synced it
                proc.signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
                await ws.close()
        finally:
            proc.stop()
        assert any(p.is_dir() for p in (tmp_path / "spool").iterdir())
        restarted = RelayProcess(cfg, tmp_path).start()
        try:
            store = await S3Store.open(s3_recording_config(tmp_path, seaweedfs, bucket).s3)
            try:
                folder = await s3_objects(store, session_id, tmp_path)
            finally:
                await store.aclose()
        finally:
            restarted.stop()
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    assert manifest["complete"] is False and manifest["incomplete_reason"] == "relay_restart"
    report = verify_dir(folder)
    assert report.ok, report.problems
    left, _, _ = channels(folder)
    off = left.find(bytes(sent[:CHUNK]))
    assert off >= 0 and left[off : off + len(sent)] == bytes(sent)  # nothing that was spooled is lost
