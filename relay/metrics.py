"""Every Prometheus metric the relay exports, on one injected registry.

Rules of this module:
- Names are a user-facing contract (docs/metrics.md, the Grafana dashboard, the alert rules):
  ``relay_`` prefix, base units, ``_total`` on counters, ``_seconds`` on durations.
- Tenant labels carry only tenants defined in policy files (the handshake refuses anything else),
  so cardinality is bounded by configuration. Event types are a bounded known set plus ``other``.
- Hot-path use goes through pre-resolved children (``labels()`` once per session, not per event).
- Tests build ``RelayMetrics(CollectorRegistry())`` so nothing leaks between them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from relay import __version__
from relay.loopmetrics import LoopCounter, LoopHistogram, LoopMetric

# Fine enough to see tens of microseconds at the low end, and whole seconds of stall at the top.
FORWARD_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
)  # fmt: skip
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AUDIO_DIRECTIONS = ("input", "output", "heard")

KNOWN_EVENT_TYPES = frozenset(
    {
        # client → server
        "session.update", "transcription_session.update", "input_audio_buffer.append",
        "input_audio_buffer.commit", "input_audio_buffer.clear", "conversation.item.create",
        "conversation.item.retrieve", "conversation.item.truncate", "conversation.item.delete",
        "response.create", "response.cancel", "output_audio_buffer.clear",
        # server → client
        "error", "session.created", "session.updated", "transcription_session.updated",
        "conversation.created", "conversation.item.added", "conversation.item.done",
        "conversation.item.created", "conversation.item.retrieved", "conversation.item.truncated",
        "conversation.item.deleted", "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed", "input_audio_buffer.committed",
        "input_audio_buffer.cleared", "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.timeout_triggered",
        "response.created", "response.done", "response.output_item.added", "response.output_item.done",
        "response.content_part.added", "response.content_part.done", "response.output_text.delta",
        "response.output_text.done", "response.text.delta", "response.text.done",
        "response.output_audio.delta", "response.output_audio.done", "response.audio.delta",
        "response.audio.done", "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done", "response.audio_transcript.delta",
        "response.audio_transcript.done", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
        "response.mcp_call.completed", "response.mcp_call.failed", "mcp_list_tools.in_progress",
        "mcp_list_tools.completed", "mcp_list_tools.failed", "rate_limits.updated",
        "output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared",
    }
)  # fmt: skip


def event_type_label(event_type: str) -> str:
    return event_type if event_type in KNOWN_EVENT_TYPES else "other"


class RelayMetrics:
    """Owns every collector. One instance per process (or per test, with its own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # Sessions
        self.sessions_active = Gauge("relay_sessions_active", "Live sessions.", ["tenant"], registry=r)
        self.sessions_total = Counter(
            "relay_sessions_total", "Sessions ended, by outcome.", ["tenant", "outcome"], registry=r
        )
        self.session_close_codes_total = Counter(
            "relay_session_close_codes_total",
            "WebSocket close codes seen at session end, by side.",
            ["side", "code"],
            registry=r,
        )
        self.session_duration_seconds = Histogram(
            "relay_session_duration_seconds",
            "Session length.",
            ["tenant"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
            registry=r,
        )
        self.handshake_rejections_total = Counter(
            "relay_handshake_rejections_total",
            "Upgrade requests refused before the upgrade, by reason and HTTP status.",
            ["reason", "status"],
            registry=r,
        )
        # Events and latency
        # The two metrics touched on every event are loop-owned (relay.loopmetrics): no lock per event.
        self.events_total = LoopCounter(
            "relay_events_total", "Events relayed.", ["tenant", "direction", "type"], registry=r
        )
        self.client_frame_errors_total = Counter(
            "relay_client_frame_errors_total", "Client frames refused as malformed.", ["code"], registry=r
        )
        self.forward_seconds = LoopHistogram(
            "relay_forward_seconds",
            "Latency the relay adds per event: frame received to frame sent on the other side.",
            ["direction"],
            registry=r,
            buckets=FORWARD_BUCKETS,
        )
        self.upstream_connect_seconds = Histogram(
            "relay_upstream_connect_seconds",
            "Time to open the upstream WebSocket.",
            buckets=CONNECT_BUCKETS,
            registry=r,
        )
        self.upstream_errors_total = Counter(
            "relay_upstream_errors_total",
            "Upstream failures: handshake statuses, error events, abnormal closes.",
            ["code"],
            registry=r,
        )
        self.first_audio_seconds = Histogram(
            "relay_first_audio_seconds",
            "End of the caller's turn to the first output audio reaching the client.",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tool_call_seconds = Histogram(
            "relay_tool_call_seconds",
            "Model's function call to the client's function_call_output.",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Metering
        self.audio_seconds_total = Counter(
            "relay_audio_seconds_total",
            "Audio seconds metered: input, output (generated), heard (after truncation).",
            ["tenant", "direction"],
            registry=r,
        )
        self.tokens_total = Counter(
            "relay_tokens_total", "Tokens from usage, by kind.", ["tenant", "model", "kind"], registry=r
        )
        self.cost_usd_total = Counter(
            "relay_cost_usd_total",
            "Cost in USD from usage and pricing.yaml.",
            ["tenant", "model"],
            registry=r,
        )
        # Policies
        self.policy_actions_total = Counter(
            "relay_policy_actions_total",
            "Actions taken by policies.",
            ["tenant", "policy", "action"],
            registry=r,
        )
        self.policy_errors_total = Counter(
            "relay_policy_errors_total",
            "Policies that raised (the session failed closed).",
            ["policy"],
            registry=r,
        )
        self.policy_reloads_total = Counter(
            "relay_policy_reloads_total", "Policy reloads, by result (ok, error).", ["result"], registry=r
        )
        # Budgets
        self.budget_rejections_total = Counter(
            "relay_budget_rejections_total",
            "Sessions or responses refused by a budget.",
            ["tenant", "budget"],
            registry=r,
        )
        self.budget_warnings_total = Counter(
            "relay_budget_warnings_total",
            "Budget warning thresholds crossed.",
            ["tenant", "budget"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "relay_budget_remaining",
            "What is left of a budget in its own unit (seconds, tokens, USD, sessions).",
            ["tenant", "budget"],
            registry=r,
        )
        self.budget_used_ratio = Gauge(
            "relay_budget_used_ratio", "Used fraction of a budget (0..1+).", ["tenant", "budget"], registry=r
        )
        self.budget_store_errors_total = Counter(
            "relay_budget_store_errors_total", "Failed calls to the budget ledger store.", ["op"], registry=r
        )
        # Recording
        self.recording_queue_depth = Gauge(
            "relay_recording_queue_depth", "Events waiting for the recorder, all sessions.", registry=r
        )
        self.recording_dropped_total = Counter(
            "relay_recording_dropped_total",
            "Recording overflows (events dropped or sessions ended).",
            ["tenant", "policy"],
            registry=r,
        )
        self.recording_spool_bytes = Gauge(
            "relay_recording_spool_bytes", "Bytes in the local spool not yet uploaded.", registry=r
        )
        self.recording_upload_lag_seconds = Gauge(
            "relay_recording_upload_lag_seconds",
            "Age of the oldest spooled byte not yet uploaded.",
            registry=r,
        )
        self.recording_upload_failures_total = Counter(
            "relay_recording_upload_failures_total", "Failed uploads (retried).", ["op"], registry=r
        )
        self.recording_uploaded_bytes_total = Counter(
            "relay_recording_uploaded_bytes_total", "Bytes uploaded to the recording sink.", registry=r
        )
        self.recordings_total = Counter(
            "relay_recordings_total", "Recordings sealed, by completeness.", ["status"], registry=r
        )
        self.recording_spool_limit_bytes = Gauge(
            "relay_recording_spool_limit_bytes",
            "Spool size at which new sessions are refused (recording.spool_max_mb); 0 if unset.",
            registry=r,
        )
        # Process
        self.draining = Gauge("relay_draining", "1 while the relay drains for shutdown.", registry=r)
        self.build_info = Gauge(
            "relay_build_info", "Always 1; the running version is in the label.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        # Label sets with a fixed, documented set of values exist from the start (see preinit_tenant).
        for direction in ("client_to_upstream", "upstream_to_client"):
            self.forward_seconds.labels(direction)
        for result in ("ok", "error"):
            self.policy_reloads_total.labels(result)
        for status in ("complete", "incomplete"):
            self.recordings_total.labels(status)

    def preinit_tenant(self, tenant: str) -> None:
        """Create a tenant's series at zero before its first session (call for every policy tenant).

        Prometheus' ``rate``/``increase`` only see growth between two scrapes, so a series that is
        born at 3 loses those 3; a series that does not exist makes a dashboard panel "No data"
        and an alert expression empty. Label values that only the subsystems know (policy ids,
        budget names, models, upload ops) are created by those subsystems.
        """
        self.sessions_active.labels(tenant)
        self.sessions_total.labels(tenant, "ok")
        self.session_duration_seconds.labels(tenant)
        self.first_audio_seconds.labels(tenant)
        self.tool_call_seconds.labels(tenant)
        for direction in AUDIO_DIRECTIONS:
            self.audio_seconds_total.labels(tenant, direction)
        for policy in ("drop", "terminate"):
            self.recording_dropped_total.labels(tenant, policy)


def all_metric_names(metrics: RelayMetrics) -> list[str]:
    return sorted(
        m._name  # noqa: SLF001
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase | LoopMetric)
    )
