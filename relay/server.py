"""The relay process: the public ``/v1/realtime`` endpoint, the admin listener, and lifecycle.

Rules of this module:
- Everything that can refuse a client does so before the upgrade, with OpenAI's JSON error
  shape: 401 (key), 403 (model), 429 (budget, concurrency, upstream rate limit), 502/504
  (upstream), 503 (draining, spool full, budget store down).
- The upstream socket is open before the client's upgrade completes, so a client never holds a
  socket that leads nowhere.
- Long-lived resources (policy store and watcher, budget service, recorder, upstream client,
  embedded simulator) are created in ``start`` and released in ``stop``, in reverse order.
- The admin listener (health, readiness, metrics, usage) never shares the public port.
- Draining (SIGTERM): readiness turns 503 and new sessions get 503; live sessions run up to
  ``drain_seconds``, then close with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay import __version__
from relay.actions import Send
from relay.budget import BudgetService
from relay.config import RelayConfig, split_hostport
from relay.contracts import SessionInfo, SessionSummary
from relay.errors import HandshakeRejected, RecorderError, UpstreamError
from relay.events import C2U, error_event
from relay.handshake import (
    ANSWER_SUBPROTOCOL,
    client_key,
    detect_dialect,
    offered_subprotocols,
    requested_model,
)
from relay.latency import LatencyTracker
from relay.logs import session_logger
from relay.metrics import RelayMetrics
from relay.policy.store import PolicyStore, PolicyWatcher
from relay.pump import PumpResult, Pumps
from relay.recording import Recorder
from relay.session import Session
from relay.telemetry import PrometheusEventCounter
from relay.upstream import UpstreamConnector, UpstreamLink, UpstreamTarget

log = logging.getLogger("relay")

_JSON = "application/json"


def error_response(
    status: int, message: str, code: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


class Relay:
    """One relay process. ``await start()``, serve, ``await drain()``, ``await stop()``."""

    def __init__(
        self,
        cfg: RelayConfig,
        *,
        metrics: RelayMetrics | None = None,
        upstream: UpstreamTarget | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or RelayMetrics()
        self._upstream_override = upstream
        self.draining = False
        self.ready = False
        self.live: dict[str, Pumps] = {}
        self._idle = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._counter_cache: dict[tuple[str, int, str], Any] = {}
        self._runners: list[web.AppRunner] = []
        self._sim: Any = None
        self._watcher: Any = None
        self.store: Any = None
        self.budgets: Any = None
        self.recorder: Any = None
        self.connector: UpstreamConnector | None = None
        self.public_port = 0
        self.admin_port = 0
        self.upstream_target: UpstreamTarget | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        self.store = PolicyStore.load(cfg.policies_dir)
        for tenant in self.store.tenants:
            self.metrics.preinit_tenant(tenant)
        self._watcher = PolicyWatcher(
            cfg.policies_dir, self._policies_changed, self.metrics, store=self.store
        )
        await self._watcher.start()

        target = self._upstream_override
        if target is None and cfg.simulated_upstream:
            target = await self._start_embedded_simulator()
        elif target is None:
            target = UpstreamTarget.from_config(cfg.upstream)
        self.upstream_target = target
        self.connector = UpstreamConnector(target, max_msg_size=cfg.limits.upstream_max_frame_bytes)
        await self.connector.start()

        self.budgets = await BudgetService.create(cfg.budgets, self.metrics)
        if cfg.recording.enabled:
            self.recorder = await Recorder.create(cfg.recording, self.metrics, relay_version=__version__)

        public = web.Application(client_max_size=1024**2)
        public.router.add_get("/v1/realtime", self._handle_realtime)
        public.router.add_get("/realtime", self._handle_realtime)
        admin = web.Application()
        admin.router.add_get("/healthz", self._healthz)
        admin.router.add_get("/readyz", self._readyz)
        admin.router.add_get("/metrics", self._metrics)
        admin.router.add_get("/v1/relay/usage", self._usage)

        host, port = split_hostport(cfg.listen, key="listen")
        ssl_ctx = None
        if cfg.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        self.public_port = await self._serve(public, host, port, ssl_ctx)
        ahost, aport = split_hostport(cfg.admin_listen, key="admin_listen")
        self.admin_port = await self._serve(admin, ahost, aport, None)
        self.ready = True
        log.info(
            "relay started",
            extra={
                "listen": f"{host}:{self.public_port}",
                "admin_listen": f"{ahost}:{self.admin_port}",
                "tls": bool(ssl_ctx),
                "upstream": "embedded simulator" if self._sim is not None else _redact_url(target.url),
                "policy_version": self.store.version,
                "tenants": len(self.store.tenants),
                "recording": cfg.recording.sink if cfg.recording.enabled else "off",
                "budgets": cfg.budgets.store.split("@")[-1],
                "version": __version__,
            },
        )

    async def _serve(self, app: web.Application, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024)
        await site.start()
        self._runners.append(runner)
        server = site._server  # noqa: SLF001 - the only way aiohttp exposes the bound port
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _start_embedded_simulator(self) -> UpstreamTarget:
        from relay.sim import SimConfig, SimServer

        key = "sim-" + secrets.token_urlsafe(16)
        self._sim = SimServer(SimConfig(api_key=key, host="127.0.0.1", port=0, record_frames=False))
        await self._sim.start()
        log.warning(
            "NO UPSTREAM API KEY CONFIGURED: the relay is using its built-in Realtime simulator as upstream. "
            "Set upstream.api_key (RELAY_UPSTREAM_API_KEY or ${OPENAI_API_KEY}) to reach OpenAI.",
            extra={"simulator_url": self._sim.url},
        )
        return UpstreamTarget(self._sim.url, key, self.cfg.upstream.connect_timeout)

    def _policies_changed(self, store: Any) -> None:
        self.store = store
        for tenant in store.tenants:
            self.metrics.preinit_tenant(tenant)

    async def drain(self, seconds: float | None = None) -> None:
        """Stop taking sessions; wait for live ones up to ``drain_seconds``, then close them (1001)."""
        self.draining = True
        self.ready = False
        self.metrics.draining.set(1)
        wait = self.cfg.drain_seconds if seconds is None else seconds
        log.info("draining", extra={"live_sessions": len(self.live), "drain_seconds": wait})
        if self.live:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=wait)
            except TimeoutError:
                pass
        for pumps in list(self.live.values()):
            pumps.shutdown(1001, "relay shutting down")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=10.0)

    async def stop(self) -> None:
        self.ready = False
        if self.live:
            await self.drain(0)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.recorder is not None:
            await self.recorder.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        if self.connector is not None:
            await self.connector.aclose()
        if self._sim is not None:
            await self._sim.stop()
        if self._watcher is not None:
            await self._watcher.stop()

    # -- the public endpoint -----------------------------------------------------------------

    async def _handle_realtime(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            return await self._realtime(request)
        finally:
            if task is not None:
                self._handlers.discard(task)

    def _reject(
        self, reason: str, status: int, message: str, code: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.metrics.handshake_rejections_total.labels(reason, str(status)).inc()
        return error_response(status, message, code, headers=headers)

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            return self._reject(
                "not_websocket", 400, "This endpoint speaks WebSocket only.", "websocket_required"
            )
        if not self.ready:
            return self._reject(
                "draining",
                503,
                "The relay is shutting down; reconnect.",
                "relay_draining",
                {"Retry-After": "1"},
            )
        subprotocols = offered_subprotocols(headers)
        key = client_key(headers, subprotocols)
        store = self.store
        auth = store.authenticate(key) if key else None
        if auth is None:
            return self._reject(
                "auth",
                401,
                "Missing API key." if not key else "Incorrect API key provided.",
                "invalid_api_key",
            )
        tenant, key_id = auth
        tenant_policy = store.tenant(tenant)
        query = request.query
        model = requested_model(query)
        dialect = detect_dialect(headers, subprotocols)
        session_id = "rs_" + secrets.token_hex(12)
        info = SessionInfo(
            session_id=session_id,
            tenant=tenant,
            key_id=key_id,
            model=model,
            dialect=dialect,
            intent=query.get("intent", ""),
            call_id=query.get("call_id", ""),
            client_addr=request.remote or "",
            user_agent=headers.get("User-Agent", ""),
            started_at=time.time(),
            started_ns=time.monotonic_ns(),
            policy_version=tenant_policy.version,
        )
        budget_spec = tenant_policy.section("budgets")
        try:
            tenant_policy.check_handshake(model, info.intent)
            if self.recorder is not None:
                self.recorder.admit()
            admission = await self.budgets.admit(info, budget_spec)
        except HandshakeRejected as exc:
            reason = {403: "policy", 429: "budget"}.get(exc.status, "refused")
            return self._reject(reason, exc.status, exc.message, exc.code, exc.headers)
        except RecorderError as exc:
            return self._reject("spool_full", 503, str(exc), "recording_unavailable", {"Retry-After": "5"})
        guard = self.budgets.guard(info, budget_spec, admission)

        assert self.connector is not None
        try:
            upstream, connect_s = await self.connector.connect(request.query_string, dialect)
        except UpstreamError as exc:
            guard.close(_empty_summary(info, "upstream_refused"))
            self.metrics.upstream_errors_total.labels(f"http_{exc.status}").inc()
            extra = {"Retry-After": exc.retry_after} if exc.retry_after else None
            return self._reject("upstream", exc.status, exc.message, exc.code, extra)
        self.metrics.upstream_connect_seconds.observe(connect_s)

        client = web.WebSocketResponse(
            protocols=(ANSWER_SUBPROTOCOL,) if subprotocols else (),
            compress=False,
            max_msg_size=self.cfg.limits.max_frame_bytes * 2,
            autoping=True,
        )
        client.headers["X-Relay-Session-Id"] = session_id
        try:
            await client.prepare(request)
        except Exception:
            upstream.abort()
            guard.close(_empty_summary(info, "client_upgrade_failed"))
            raise
        return await self._run_session(info, tenant_policy, guard, request, client, upstream)

    async def _run_session(
        self,
        info: SessionInfo,
        tenant_policy: Any,
        guard: Any,
        request: web.Request,
        client: web.WebSocketResponse,
        upstream: UpstreamLink,
    ) -> web.WebSocketResponse:
        metrics = self.metrics
        slog = session_logger(info.session_id, info.tenant)
        policy = tenant_policy.bind(info, metrics)
        recording = None
        if self.recorder is not None:
            recording = self.recorder.open(info, tenant_policy.section("recording"))
        latency = LatencyTracker(
            metrics.first_audio_seconds.labels(info.tenant), metrics.tool_call_seconds.labels(info.tenant)
        )
        session = Session(
            info,
            policy=policy,
            guard=guard,
            recording=recording,
            observers=(latency,),
            counter=PrometheusEventCounter(metrics, info.tenant, self._counter_cache),
            max_frame_bytes=self.cfg.limits.max_frame_bytes,
        )
        transport = request.transport
        assert isinstance(transport, asyncio.Transport)
        pumps = Pumps(session, transport, upstream, client_max_size=self.cfg.limits.max_frame_bytes * 2)
        self.live[info.session_id] = pumps
        self._idle.clear()
        metrics.sessions_active.labels(info.tenant).inc()
        opened = {
            "model": info.model,
            "dialect": info.dialect.value,
            "intent": info.intent,
            "client_addr": info.client_addr,
            "user_agent": info.user_agent,
            "key_id": info.key_id,
            "policy_version": info.policy_version,
        }
        slog.info("session open", extra=opened)
        session.relay_event("session.open", opened, time.monotonic_ns())
        limit = self.cfg.limits.max_session_seconds
        expired = error_event(
            "session_expired",
            f"The session reached the relay's maximum length of {limit:g} seconds.",
            error_type="invalid_request_error",
        )
        timer = asyncio.get_running_loop().call_later(
            limit, pumps.shutdown, 1000, "maximum session length reached", "max_duration", expired
        )
        result: PumpResult | None = None
        try:
            initial = [Send(C2U, orjson.dumps(p).decode()) for p in policy.initial_actions()]
            result = await pumps.run(initial)
        finally:
            timer.cancel()
            self.live.pop(info.session_id, None)
            if not self.live:
                self._idle.set()
            metrics.sessions_active.labels(info.tenant).dec()
            if result is None:
                result = PumpResult("relay", "internal_error", 1011, "relay error", 1000, "")
            self._finish(info, session, guard, recording, result, slog)
        return client

    def _finish(
        self, info: SessionInfo, session: Session, guard: Any, recording: Any, result: PumpResult, slog: Any
    ) -> None:
        now = time.time()
        summary = SessionSummary(
            ended_at=now,
            duration_s=round(now - info.started_at, 3),
            client_close_code=result.client_code,
            client_close_reason=result.client_reason,
            upstream_close_code=result.upstream_code,
            upstream_close_reason=result.upstream_reason,
            outcome=result.outcome,
            events_client_to_upstream=session.seq[0],
            events_upstream_to_client=session.seq[1],
        )
        try:
            guard.close(summary)
        except Exception:
            slog.exception("budget guard failed to close")
        closed = {
            "model": info.model,
            "dialect": info.dialect.value,
            "duration_s": summary.duration_s,
            "closed_by": result.closed_by,
            "outcome": result.outcome,
            "client_close_code": result.client_code,
            "client_close_reason": result.client_reason,
            "upstream_close_code": result.upstream_code,
            "upstream_close_reason": result.upstream_reason,
            "events_client_to_upstream": summary.events_client_to_upstream,
            "events_upstream_to_client": summary.events_upstream_to_client,
            "frame_errors": session.frame_errors,
            "usage": summary.usage,
        }
        try:
            session.finish(time.monotonic_ns())
        except Exception:
            slog.exception("policy failed to release held recording events")
        session.relay_event("session.close", closed, time.monotonic_ns())
        if recording is not None:
            try:
                recording.close(summary)
            except Exception:
                slog.exception("recording failed to close")
        m = self.metrics
        m.sessions_total.labels(info.tenant, result.outcome).inc()
        m.session_duration_seconds.labels(info.tenant).observe(summary.duration_s)
        if result.client_code is not None:
            m.session_close_codes_total.labels("client", str(result.client_code)).inc()
        if result.upstream_code is not None:
            m.session_close_codes_total.labels("upstream", str(result.upstream_code)).inc()
        if result.outcome == "upstream_dropped":
            m.upstream_errors_total.labels("dropped").inc()
        slog.info("session close", extra=closed)

    # -- admin -------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready and not self.draining:
            return web.json_response({"status": "ready", "live_sessions": len(self.live)})
        status = "draining" if self.draining else "starting"
        return web.json_response({"status": status, "live_sessions": len(self.live)}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _usage(self, request: web.Request) -> web.Response:
        tenant = request.query.get("tenant", "")
        if not tenant or tenant not in self.store.tenants:
            return error_response(404, f"Unknown tenant {tenant!r}.", "unknown_tenant")
        spec = self.store.tenant(tenant).section("budgets")
        return web.json_response(
            await self.budgets.usage(tenant, spec), dumps=lambda o: orjson.dumps(o).decode()
        )


def _empty_summary(info: SessionInfo, outcome: str) -> SessionSummary:
    return SessionSummary(time.time(), 0.0, None, "", None, "", outcome, 0, 0)


def _redact_url(url: str) -> str:
    return url.split("?", 1)[0]


__all__ = ["Relay", "error_response"]
