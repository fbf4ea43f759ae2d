"""The tool allow-list: client tool lists, model calls, MCP tools, argument schemas."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.verdicts import Drop, Forward, Reply

from .helpers import c2u, chain, out_payload, run, u2c

SPEC = """
- use: tools
  id: tools
  with:
    allow:
      - get_weather
      - name: lookup_order
        arguments: {type: object, required: [order_id], properties: {order_id: {type: string, pattern: "^ORD-"}}}
      - "crm_*"
    mcp:
      servers:
        - {label: docs, url: "https://mcp.example.com/*"}
"""


def fn(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": {"type": "object"}}


def session_update(tools: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "session.update",
        "event_id": "evt_1",
        "session": {"type": "realtime", "tools": tools, **extra},
    }


@pytest.mark.parametrize(
    ("tools", "kept"),
    [
        ([fn("get_weather")], ["get_weather"]),
        ([fn("get_weather"), fn("delete_account")], ["get_weather"]),
        ([fn("crm_find"), fn("crmfind")], ["crm_find"]),
        ([{"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/v1"}], ["mcp:docs"]),
        ([{"type": "mcp", "server_label": "docs", "server_url": "https://evil.example.com/v1"}], []),
        ([{"type": "mcp", "server_label": "other", "server_url": "https://mcp.example.com/v1"}], []),
        ([{"type": "web_search"}], []),
    ],
)
def test_strip_tools_not_on_the_list(tools: list[Any], kept: list[str]) -> None:
    ch = chain(SPEC)
    event = c2u(session_update(tools))
    verdict, audit = run(ch, event)
    names = [
        f"mcp:{t['server_label']}" if t.get("type") == "mcp" else t["name"]
        for t in out_payload(verdict, event)["session"]["tools"]
    ]
    assert names == kept
    assert sum(a.action == "strip_tool" for a in audit) == len(tools) - len(kept)


def test_reject_mode_refuses_the_whole_event() -> None:
    ch = chain(SPEC.replace("    allow:", "    on_violation: reject\n    allow:", 1))
    verdict, audit = run(ch, c2u(session_update([fn("get_weather"), fn("rm_rf")])))
    assert isinstance(verdict, Reply)
    err = verdict.events[0]["error"]
    assert (err["code"], err["param"], err["event_id"]) == ("tool_not_allowed", "session.tools[1]", "evt_1")
    assert [a.action for a in audit] == ["reject"]


def test_response_create_tools_and_tool_choice() -> None:
    ch = chain(SPEC)
    event = c2u(
        {
            "type": "response.create",
            "response": {"tools": [fn("rm_rf")], "tool_choice": {"type": "function", "name": "rm_rf"}},
        }
    )
    verdict, audit = run(ch, event)
    resp = out_payload(verdict, event)["response"]
    assert resp["tools"] == [] and "tool_choice" not in resp
    assert [a.action for a in audit] == ["strip_tool", "strip_field"]


def test_mcp_require_approval_is_enforced() -> None:
    ch = chain(SPEC)
    tool = {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.com/",
        "require_approval": "never",
    }
    event = c2u(session_update([tool]))
    verdict, audit = run(ch, event)
    assert out_payload(verdict, event)["session"]["tools"][0]["require_approval"] == "always"
    assert [a.action for a in audit] == ["enforce_approval"]


def test_allowed_tools_pass_untouched() -> None:
    ch = chain(SPEC)
    assert run(ch, c2u(session_update([fn("get_weather")])))[0] == Forward()


def call_events(name: str, args: str, item: str = "fc_1", call: str = "call_1") -> list[Any]:
    fc = {"id": item, "type": "function_call", "call_id": call, "name": name, "arguments": ""}
    done_item = {**fc, "arguments": args, "status": "completed"}
    return [
        u2c({"type": "response.output_item.added", "response_id": "r1", "output_index": 0, "item": fc}),
        u2c({"type": "conversation.item.added", "item": fc}),
        u2c({"type": "response.function_call_arguments.delta", "item_id": item, "call_id": call, "delta": args[:5]}),
        u2c({"type": "response.function_call_arguments.delta", "item_id": item, "call_id": call, "delta": args[5:]}),
        u2c({"type": "response.function_call_arguments.done", "item_id": item, "call_id": call, "name": name,
             "arguments": args}),
        u2c({"type": "response.output_item.done", "response_id": "r1", "output_index": 0, "item": done_item}),
        u2c({"type": "conversation.item.done", "item": done_item}),
        u2c({"type": "response.done", "response": {"id": "r1", "status": "completed", "output": [done_item]}}),
    ]  # fmt: skip


def test_disallowed_model_call_never_reaches_the_client() -> None:
    ch = chain(SPEC)
    events = call_events("delete_account", '{"user": "me"}')
    verdicts = [run(ch, e)[0] for e in events]
    assert all(isinstance(v, Drop) for v in verdicts[:5])
    reply = verdicts[5]
    assert isinstance(reply, Reply)  # goes back to the source: upstream
    item = reply.events[0]["item"]
    assert item["type"] == "function_call_output" and item["call_id"] == "call_1"
    assert "not available" in orjson.loads(item["output"])["error"]
    assert isinstance(verdicts[6], Drop)
    assert out_payload(verdicts[7], events[7])["response"]["output"] == []
    # The upstream's echo of the relay's own item is not shown to the client either.
    echo = u2c(
        {"type": "conversation.item.added", "item": {"id": item["id"], "type": "function_call_output"}}
    )
    assert isinstance(run(ch, echo)[0], Drop)
    # The client cannot answer the call it never saw.
    answer = c2u(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "x"},
        }
    )
    assert isinstance(run(ch, answer)[0], Reply)


def test_allowed_call_passes_through() -> None:
    ch = chain(SPEC)
    for e in call_events("get_weather", '{"city": "Paris"}'):
        assert run(ch, e)[0] == Forward()


@pytest.mark.parametrize(
    ("args", "ok"), [('{"order_id": "ORD-1"}', True), ('{"order_id": "X"}', False), ("{bad", False)]
)
def test_argument_schema(args: str, ok: bool) -> None:
    ch = chain(SPEC)
    events = call_events("lookup_order", args)
    verdicts = [run(ch, e)[0] for e in events]
    assert verdicts[0] == Forward()  # the call is announced before its arguments are known
    assert all(isinstance(v, Drop) for v in verdicts[2:4])  # deltas withheld while unchecked
    if ok:
        assert verdicts[4] == Forward() and verdicts[5] == Forward()
    else:
        assert isinstance(verdicts[4], Drop) and isinstance(verdicts[5], Reply)
        assert out_payload(verdicts[7], events[7])["response"]["output"] == []
