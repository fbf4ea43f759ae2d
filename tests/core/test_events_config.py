"""Pure helpers of the core: type peeking, handshake parsing, configuration loading."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import load_config
from relay.errors import ConfigError
from relay.events import Dialect, parse_upstream_frame, peek_type
from relay.handshake import client_key, detect_dialect, offered_subprotocols


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"response.done"}', "response.done"),
        ('{"event_id":"e","type" : "a.b","x":1}', "a.b"),
        ('{"session":{"type":"realtime"},"type":"session.update"}', None),  # nested first: unsure
        ('{"list":[{"type":"x"}],"type":"y"}', None),
        ('{"type":"we\\"ird"}', None),
        ('{"delta":"say \\"type\\": \\"x\\"","type":"real"}', "real"),
        ("[]", None),
    ],
)
def test_peek_type(text: str, expected: str | None) -> None:
    assert peek_type(text) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.text(min_size=1, max_size=20))
def test_peek_never_disagrees_with_a_parse(body: dict[str, object], etype: str) -> None:
    body = {**body, "type": etype}
    text = orjson.dumps(body).decode()
    peeked = peek_type(text)
    assert peeked is None or peeked == etype
    assert parse_upstream_frame(text, 0, 0).type == etype


def test_client_key_sources_and_dialect() -> None:
    assert client_key({"Authorization": "Bearer sk-1"}, []) == "sk-1"
    assert client_key({"api-key": "az"}, []) == "az"
    protos = offered_subprotocols(
        {"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.k2, openai-beta.realtime-v1"}
    )
    assert client_key({}, protos) == "k2"
    assert detect_dialect({}, protos) is Dialect.BETA
    assert detect_dialect({"OpenAI-Beta": "realtime=v1"}, []) is Dialect.BETA
    assert detect_dialect({"Authorization": "Bearer x"}, ["realtime"]) is Dialect.GA
    assert client_key({}, ["realtime"]) is None


def test_config_file_env_and_interpolation(tmp_path: Path) -> None:
    f = tmp_path / "relay.yaml"
    f.write_text(
        "listen: 0.0.0.0:9000\nupstream:\n  api_key: ${SECRET}\n  url: ${URL:-wss://example.test/v1/realtime}\n"
        "recording:\n  sink: s3\n  s3: {bucket: audit}\n"
    )
    cfg = load_config(f, {"SECRET": "sk-x", "RELAY_DRAIN_SECONDS": "7", "RELAY_RECORDING_S3_PREFIX": "p"})
    assert cfg.listen == "0.0.0.0:9000" and cfg.upstream.api_key == "sk-x"
    assert cfg.upstream.url == "wss://example.test/v1/realtime"
    assert cfg.drain_seconds == 7.0 and cfg.recording.s3.prefix == "p" and cfg.recording.s3.bucket == "audit"
    assert not cfg.simulated_upstream
    assert load_config(None, {}).simulated_upstream


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("upstreem: {}\n", "'upstreem'"),
        ("upstream: {urll: x}\n", "upstream.'urll'"),
        ("drain_seconds: soon\n", "drain_seconds"),
        ("recording: {sink: ftp}\n", "recording.sink"),
        ("budgets: {store: mysql://x}\n", "budgets.store"),
        ("listen: nowhere\n", "listen"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    f = tmp_path / "relay.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("'", "'?")):
        load_config(f, {})
