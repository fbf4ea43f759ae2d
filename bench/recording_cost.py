"""What compliance recording costs per event, in process (no sockets, no upstream, no client).

Run: ``.venv/bin/python -m bench.recording_cost [--sessions 300] [--seconds 15]``.

A real ``Recorder`` with the local sink (spool and sink in a temporary directory) records N
sessions fed in real time with a voice call's traffic: 50 ``input_audio_buffer.append``/s (20 ms
of PCM16 24 kHz each) and about 15 upstream events/s (10 ``response.output_audio.delta`` of 100 ms,
5 transcript deltas, a new response every 5 s). Events are built with ``relay.events`` from wire
text, as the session core builds them, and handed to ``record_event(event, t_us)`` as
``Session.sent`` hands them. The recorder's own writer loop and upload tasks run as in the relay.

Reported, over the steady part of the run (after the 3 s hold-back, when sealing has started):
- ``record_event``: µs per call, the share paid on the forwarding path;
- writer: µs per event of event-loop time spent in the recorder's callbacks (writer loop and
  upload tasks), and of CPU in worker threads (syncfs, spool reads, part building);
- the longest single hold of the event loop by the recorder, and how late a 1 ms timer fires
  (a stand-in for the latency forwarding sees);
- the end of the calls (last writes, WAV assembly, uploads, manifests) separately, per session;
- ``relay verify`` on a few of the recordings, so a fast but wrong recorder cannot pass.

How callbacks are attributed: the bench wraps ``asyncio.events.Handle._run`` to time every loop
callback, and tells the recorder's tasks from its own by a context variable set while the recorder
creates them (a task inherits the creating context). Loop time of the recorder is the sum of its
callbacks; worker-thread CPU is the process's CPU minus the loop thread's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import gc
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from relay.config import RecordingConfig, S3Config
from relay.contracts import SessionInfo, SessionSummary
from relay.events import Dialect, Event, parse_client_frame, parse_upstream_frame
from relay.metrics import RelayMetrics
from relay.recording import Recorder
from relay.recording.verify import verify_dir

OWNER: contextvars.ContextVar[str] = contextvars.ContextVar("bench_owner", default="other")
CLIENT_EVERY_US = 20_000
DELTA_EVERY_US = 100_000
TRANSCRIPT_EVERY_US = 200_000
RESPONSE_EVERY_US = 5_000_000
FEED_EVERY = 0.002
PROBE_EVERY = 0.001
WARMUP_S = 4.0


# Loop-callback accounting ----------------------------------------------------------------------


@dataclass(slots=True)
class Holds:
    """Loop callbacks of one owner: CPU time of the loop thread in them (what the code costs,
    not the time the machine gave to other processes meanwhile), and the longest wall time."""

    count: int = 0
    total_ns: int = 0
    max_ns: int = 0
    max_wall_ns: int = 0
    over_1ms: int = 0
    samples: list[int] = field(default_factory=list)
    top: list[tuple[int, str]] = field(default_factory=list)

    def add(self, ns: int, handle: Any, gc_ns: int = 0, wall_ns: int = 0) -> None:
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns
        if wall_ns > self.max_wall_ns:
            self.max_wall_ns = wall_ns
        if ns > 1_000_000:
            self.over_1ms += 1
        if ns > 20_000:  # only the holds that could matter for latency are kept for percentiles
            self.samples.append(ns)
        if handle is not None and (len(self.top) < 5 or ns > self.top[-1][0]):
            where = _where(handle) + (f" (of which GC {gc_ns / 1e6:.2f} ms)" if gc_ns else "")
            self.top.append((ns, where))
            self.top.sort(key=lambda x: -x[0])
            del self.top[5:]


def _where(handle: Any) -> str:
    """The task a callback stepped and where it paused next (what a long hold was doing)."""
    task = getattr(handle._callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return repr(handle._callback)[:80]
    chain = []
    coro: Any = task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        code = coro.cr_frame.f_code
        if "asyncio" not in code.co_filename:
            chain.append(f"{code.co_name}:{coro.cr_frame.f_lineno}")
        coro = getattr(coro, "cr_await", None)
    return f"{task.get_name()} paused at " + (" > ".join(chain[-2:]) if chain else "(finished)")


class Accounting:
    def __init__(self) -> None:
        self.on = False
        self.by_owner: dict[str, Holds] = defaultdict(Holds)
        self.gc_ns = 0
        """Garbage-collector pauses inside the current callback (the relay's GC settings)."""
        self.gc = Holds()
        self._gc_start = 0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter_ns()
        elif self.on:
            ns = time.perf_counter_ns() - self._gc_start
            self.gc_ns += ns
            self.gc.add(ns, None)

    def install(self) -> None:
        gc.callbacks.append(self._on_gc)
        handle_cls: Any = asyncio.events.Handle
        original = handle_cls._run
        wall, cpu = time.perf_counter_ns, time.thread_time_ns
        me = self

        def timed_run(handle: Any) -> None:
            if not me.on:
                original(handle)
                return
            me.gc_ns = 0
            w0, t0 = wall(), cpu()
            original(handle)
            ns, wall_ns = cpu() - t0, wall() - w0
            ctx = handle._context
            owner = ctx.get(OWNER, "other") if ctx is not None else "other"
            me.by_owner[owner].add(ns, handle, me.gc_ns, wall_ns)

        handle_cls._run = timed_run

    def reset(self) -> None:
        self.by_owner.clear()
        self.gc = Holds()


# Traffic ---------------------------------------------------------------------------------------


_ids = itertools.count(1)


def _event_id() -> str:
    """An id shaped like OpenAI's (``event_`` + 21 characters), cheaper than ``new_event_id``."""
    return f"event_{next(_ids):021d}"


def _b64_pool(n: int, size: int) -> list[str]:
    return [base64.b64encode(os.urandom(size)).decode() for _ in range(n)]


class Call:
    """One session's traffic on its own schedule (offset so sessions do not tick together)."""

    def __init__(self, index: int, sink: Any, info: SessionInfo, pools: dict[str, list[str]]) -> None:
        self.i = index
        self.sink = sink
        self.info = info
        self.pools = pools
        offset = (index * 7919) % CLIENT_EVERY_US
        self.next_client = offset
        self.next_delta = offset + 1_000_000  # the model answers after a second
        self.next_transcript = self.next_delta + 50_000
        self.next_response = self.next_delta
        self.response = 0
        self.rid = self.item = ""
        self.seq = [0, 0]
        self.n = 0

    def _client(self, text: str, now_ns: int) -> Event:
        self.seq[0] += 1
        return parse_client_frame(text, self.seq[0], now_ns)

    def _up(self, text: str, now_ns: int) -> Event:
        self.seq[1] += 1
        return parse_upstream_frame(text, self.seq[1], now_ns)

    def start(self, now_ns: int) -> list[Event]:
        fmt = {"type": "audio/pcm", "rate": 24000}
        session = {"type": "realtime", "audio": {"input": {"format": fmt}, "output": {"format": fmt}}}
        return [
            self._client(orjson.dumps({"type": "session.update", "session": session}).decode(), now_ns),
            self._up(
                orjson.dumps(
                    {"type": "session.updated", "event_id": _event_id(), "session": session}
                ).decode(),
                now_ns,
            ),
        ]

    def due(self, t_us: int, now_ns: int, out: list[Event]) -> None:
        """Append the events due by ``t_us`` (session clock) to ``out``."""
        pools = self.pools
        while self.next_client <= t_us:
            self.next_client += CLIENT_EVERY_US
            self.n += 1
            audio = pools["client"][self.n % len(pools["client"])]
            out.append(self._client('{"type":"input_audio_buffer.append","audio":"' + audio + '"}', now_ns))
        while self.next_response <= t_us:
            self.next_response += RESPONSE_EVERY_US
            if self.rid:
                out.append(self._up(self._response("response.done", "completed"), now_ns))
            self.response += 1
            self.rid = f"resp_{self.i}x{self.response:06d}"
            self.item = f"item_{self.i}x{self.response:06d}"
            out.append(self._up(self._response("response.created", "in_progress"), now_ns))
            out.append(
                self._up(
                    orjson.dumps(
                        {
                            "type": "response.output_item.added",
                            "event_id": _event_id(),
                            "response_id": self.rid,
                            "output_index": 0,
                            "item": {
                                "id": self.item,
                                "type": "message",
                                "status": "in_progress",
                                "role": "assistant",
                                "content": [],
                            },
                        }
                    ).decode(),
                    now_ns,
                )
            )
        while self.next_delta <= t_us:
            self.next_delta += DELTA_EVERY_US
            head = self._head()
            self.n += 1
            audio = pools["delta"][self.n % len(pools["delta"])]
            out.append(self._up('{"type":"response.output_audio.delta",' + head + f'"{audio}"}}', now_ns))
        while self.next_transcript <= t_us:
            self.next_transcript += TRANSCRIPT_EVERY_US
            head = self._head()
            out.append(
                self._up(
                    '{"type":"response.output_audio_transcript.delta",' + head + '"Sure, let me "}', now_ns
                )
            )

    def _head(self) -> str:
        """The members of an output delta before its ``delta``, with a fresh event id."""
        return (
            f'"event_id":"{_event_id()}","response_id":"{self.rid}","item_id":"{self.item}",'
            '"output_index":0,"content_index":0,"delta":'
        )

    def _response(self, kind: str, status: str) -> str:
        return orjson.dumps(
            {
                "type": kind,
                "event_id": _event_id(),
                "response": {"object": "realtime.response", "id": self.rid, "status": status, "output": []},
            }
        ).decode()

    def summary(self, now_ns: int) -> SessionSummary:
        return SessionSummary(
            ended_at=time.time(),
            duration_s=(now_ns - self.info.started_ns) / 1e9,
            client_close_code=1000,
            client_close_reason="",
            upstream_close_code=1000,
            upstream_close_reason="",
            outcome="ok",
            events_client_to_upstream=self.seq[0],
            events_upstream_to_client=self.seq[1],
        )


# Run -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Fed:
    events: int = 0
    record_ns: int = 0
    max_batch_ns: int = 0


async def _feed(calls: list[Call], until: float, fed: Fed, mark: dict[str, Any], acct: Accounting) -> None:
    clock = time.perf_counter_ns
    warm_at = time.monotonic() + WARMUP_S
    steady = False
    while True:
        now = time.monotonic()
        if now >= until:
            return
        if not steady and now >= warm_at:
            steady = True
            mark["steady"] = Fed(fed.events, fed.record_ns)
            mark["cpu"] = (time.process_time_ns(), time.thread_time_ns())
            acct.on = True
        now_ns = time.monotonic_ns()
        batch: list[tuple[Any, Event, int]] = []
        for call in calls:
            events: list[Event] = []
            t_us = (now_ns - call.info.started_ns) // 1000
            call.due(t_us, now_ns, events)
            batch.extend((call.sink, ev, t_us) for ev in events)
        t0 = clock()
        for sink, ev, t_us in batch:
            sink.record_event(ev, t_us)
        ns = clock() - t0
        fed.record_ns += ns
        fed.events += len(batch)
        fed.max_batch_ns = max(fed.max_batch_ns, ns)
        await asyncio.sleep(FEED_EVERY)


async def _probe(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(PROBE_EVERY)
        lateness.append(time.perf_counter() - t0 - PROBE_EVERY)


def _us(ns: float, n: int) -> float:
    return ns / 1000 / n if n else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> None:
    acct = Accounting()
    acct.install()
    tmp = Path(tempfile.mkdtemp(prefix="relay-rec-bench-"))
    try:
        cfg = RecordingConfig(
            enabled=True,
            sink="local",
            local_dir=str(tmp / "rec"),
            spool_dir=str(tmp / "spool"),
            queue_size=args.queue_size,
            s3=S3Config(part_size_mb=args.part_mb),
        )
        metrics = RelayMetrics(CollectorRegistry())
        token = OWNER.set("recorder")
        rec = await Recorder.create(cfg, metrics, relay_version="bench")
        OWNER.reset(token)
        pools = {"client": _b64_pool(64, 960), "delta": _b64_pool(16, 4800)}
        calls: list[Call] = []
        opened: list[tuple[Any, Event]] = []
        for i in range(args.sessions):
            info = SessionInfo(
                session_id=f"rs_bench_{i:05d}",
                tenant="bench",
                key_id="bench",
                model="gpt-realtime",
                dialect=Dialect.GA,
                client_addr="127.0.0.1",
                user_agent="bench",
                started_at=time.time(),
                started_ns=time.monotonic_ns(),
                policy_version="bench",
            )
            token = OWNER.set("recorder")
            sink = rec.open(info, None)
            OWNER.reset(token)
            call = Call(i, sink, info, pools)
            sink.record_relay_event("session.open", {"bench": True}, 0)
            for ev in call.start(time.monotonic_ns()):
                opened.append((sink, ev))
            calls.append(call)
        for sink, ev in opened:
            sink.record_event(ev, 0)

        # As ``relay serve`` does: start-up objects out of the collector, a higher threshold.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        fed, mark = Fed(), dict[str, Any]()
        stop = asyncio.Event()
        lateness: list[float] = []
        OWNER.set("bench")
        probe = asyncio.create_task(_probe(stop, lateness))
        t_start = time.monotonic()
        await _feed(calls, t_start + args.seconds, fed, mark, acct)
        # Steady window: from the end of the warm-up to the end of the feed.
        steady_fed = fed.events - mark["steady"].events
        steady_record = fed.record_ns - mark["steady"].record_ns
        await asyncio.sleep(0.25)  # let the writer catch up with the last tick
        acct.on = False
        cpu_all = time.process_time_ns() - mark["cpu"][0]
        cpu_threads = cpu_all - (time.thread_time_ns() - mark["cpu"][1])
        holds_window = dict(acct.by_owner)
        stop.set()
        await probe
        dropped = sum(getattr(c.sink, "dropped", 0) for c in calls)
        overflowed = sum(bool(getattr(c.sink, "overflowed", False)) for c in calls)
        rec_hold = holds_window.get("recorder", Holds())

        # End of the calls: close every session and wait for every manifest.
        acct.reset()
        acct.on = True
        cpu0, main0 = time.process_time_ns(), time.thread_time_ns()
        t_close = time.monotonic()
        now_ns = time.monotonic_ns()
        for call in calls:
            call.sink.close(call.summary(now_ns))
        while rec._live or rec._uploads:  # noqa: SLF001, ASYNC110 - polling the recorder's own state
            await asyncio.sleep(0.05)
        close_wall = time.monotonic() - t_close
        close_cpu, close_main = time.process_time_ns() - cpu0, time.thread_time_ns() - main0
        acct.on = False
        close_hold = acct.by_owner.get("recorder", Holds())
        await rec.aclose()

        folders = sorted((tmp / "rec").rglob("session=*"))
        checked = [verify_dir(f) for f in folders[: args.verify]]
        bad = [r for r in checked if not r.ok]

        window = args.seconds - WARMUP_S
        running = steady_record + rec_hold.total_ns + cpu_threads
        end_per_event = close_cpu / max(fed.events, 1)
        print(
            f"{args.sessions} sessions, {args.seconds:.0f} s calls fed in real time; steady window {window:.0f} s"
            f" after a {WARMUP_S:.0f} s warm-up: {steady_fed} events ({steady_fed / window:.0f}/s)"
        )
        print(f"  record_event (forwarding path) {_us(steady_record, steady_fed):6.2f} µs/event")
        print(
            f"  writer on the event loop       {_us(rec_hold.total_ns, steady_fed):6.2f} µs/event"
            f"  ({rec_hold.count} callbacks, {rec_hold.total_ns / 1e6 / window:.0f} ms/s)"
        )
        print(f"  writer in worker threads (CPU) {_us(cpu_threads, steady_fed):6.2f} µs/event")
        print(f"  while the calls run            {_us(running, steady_fed):6.2f} µs/event")
        print(
            f"  end of the calls               {end_per_event / 1000:6.2f} µs/event  (amortized over all {fed.events}"
            f" events: {close_cpu / 1e6 / args.sessions:.1f} ms CPU per call of {args.seconds:.0f} s, of which"
            f" worker threads {(close_cpu - close_main) / 1e6 / args.sessions:.1f}; {close_wall:.1f} s wall)"
        )
        print(
            f"  total                          {running / max(steady_fed, 1) / 1000 + end_per_event / 1000:6.2f} µs/event"
        )
        print(
            f"event-loop holds by the recorder (CPU): longest {rec_hold.max_ns / 1e6:.2f} ms, p99 of holds > 20 µs"
            f" {_pct(rec_hold.samples, 0.99) / 1e6:.2f} ms, {rec_hold.over_1ms} over 1 ms"
            f" (longest in wall time {rec_hold.max_wall_ns / 1e6:.2f} ms)"
        )
        for ns, where in rec_hold.top:
            print(f"    {ns / 1e6:6.2f} ms  {where}")
        print(f"  at the end of the calls: longest {close_hold.max_ns / 1e6:.2f} ms")
        for ns, where in close_hold.top[:3]:
            print(f"    {ns / 1e6:6.2f} ms  {where}")
        if lateness:
            print(
                f"1 ms timer lateness (forwarding's view): p50 {statistics.median(lateness) * 1e3:.2f} ms,"
                f" p99 {_pct(lateness, 0.99) * 1e3:.2f} ms, max {max(lateness) * 1e3:.2f} ms"
            )
        g = acct.gc
        print(
            f"garbage collector (relay settings): {g.count} pauses, {g.total_ns / 1e6:.0f} ms in total,"
            f" longest {g.max_ns / 1e6:.2f} ms"
        )
        others = {k: v for k, v in holds_window.items() if k != "recorder"}
        for name, h in sorted(others.items()):
            print(
                f"  (loop callbacks of {name}: {h.total_ns / 1e6:.0f} ms CPU, longest {h.max_ns / 1e6:.2f} ms)"
            )
        print(f"queue overflow: {overflowed} sessions, {dropped} events dropped")
        print(
            f"verify: {len(checked) - len(bad)}/{len(checked)} OK"
            + "".join(f"\n  {p}" for r in bad for p in r.problems[:5])
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0, help="real-time length of the calls")
    parser.add_argument("--queue-size", type=int, default=2048)
    parser.add_argument(
        "--part-mb", type=int, default=8, help="multipart part size (recording.s3.part_size_mb)"
    )
    parser.add_argument("--verify", type=int, default=3, help="recordings to check with relay verify")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.seconds <= WARMUP_S + 1:
        parser.error(f"--seconds must be more than {WARMUP_S + 1:.0f}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
