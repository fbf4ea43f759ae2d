"""``use: tools``: the tool allow-list for function and MCP tools.

Client side (``session.update`` and ``response.create``):
- A function tool whose name matches no ``allow`` entry, or an MCP tool whose ``server_label``
  (and ``server_url``) matches no ``mcp.servers`` entry, is removed (``on_violation: strip``,
  audited per tool) or the whole event is refused with an ``error`` event (``reject``).
  A ``tool_choice`` naming a removed tool is removed with it.
- ``mcp.require_approval`` (default ``always``) is written onto every MCP tool that passes.
- A ``function_call_output`` for a call the relay blocked is refused.

Model side: a function call to a tool not on the list, or whose arguments fail the tool's
``arguments`` JSON Schema, never reaches the client. Its ``response.output_item.*``,
``conversation.item.*`` and argument events are dropped; at ``response.output_item.done`` the
relay sends upstream a ``function_call_output`` carrying an error for that call, so the model
knows the tool is unavailable; the call is removed from ``response.done.response.output``. The
upstream echo of that relay-made item, and errors it causes, are dropped too. For a tool with an
``arguments`` schema the argument deltas are withheld from the client and the arguments arrive
whole in ``response.function_call_arguments.done`` once they validated. (A call that fails
validation may already have shown its ``response.output_item.added`` to the client.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import jsonschema
import orjson

from relay.events import C2U, U2C, Event, error_event
from relay.policy.base import AuditSink, Handler, Policy, SessionContext, Subscription, register
from relay.policy.errors import SectionError
from relay.policy.source import join
from relay.verdicts import Drop, Forward, Reply, Verdict

_C2U = frozenset({"session.update", "response.create", "conversation.item.create"})
_U2C = frozenset(
    {
        "response.output_item.added",
        "response.output_item.done",
        "conversation.item.added",
        "conversation.item.created",
        "conversation.item.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.done",
        "error",
    }
)
_CONTAINER = {"session.update": "session", "response.create": "response"}


@register("tools")
class ToolAllowList(Policy):
    def __init__(
        self,
        policy_id: str,
        allow: tuple[str, ...],
        schemas: tuple[tuple[str, Any], ...],
        reject: bool,
        mcp_servers: tuple[tuple[str, str | None], ...],
        require_approval: str,
    ) -> None:
        super().__init__(policy_id)
        self.allow = allow
        self.schemas = schemas
        self.reject = reject
        self.mcp_servers = mcp_servers
        self.require_approval = require_approval

    @classmethod
    def from_spec(cls, policy_id: str, spec: Mapping[str, Any], path: str) -> ToolAllowList:
        allow: list[str] = []
        schemas: list[tuple[str, Any]] = []
        for i, entry in enumerate(spec.get("allow") or ()):
            if isinstance(entry, str):
                allow.append(entry)
                continue
            allow.append(entry["name"])
            if "arguments" in entry:
                schema = entry["arguments"]
                vcls = jsonschema.validators.validator_for(schema)
                try:
                    vcls.check_schema(schema)
                except jsonschema.SchemaError as exc:
                    where = join(join(join(path, "allow"), i), "arguments")
                    raise SectionError(where, f"not a valid JSON Schema: {exc.message}") from None
                schemas.append((entry["name"], vcls(schema)))
        mcp = spec.get("mcp") or {}
        servers = tuple((s["label"], s.get("url")) for s in mcp.get("servers") or ())
        return cls(
            policy_id,
            tuple(allow),
            tuple(schemas),
            spec.get("on_violation") == "reject",
            servers,
            str(mcp.get("require_approval", "always")),
        )

    def subscriptions(self) -> Iterable[Subscription]:
        return (Subscription(C2U, _C2U), Subscription(U2C, _U2C))

    def bind(self, ctx: SessionContext) -> Handler:
        return ToolSession(self)

    def function_allowed(self, name: Any) -> bool:
        return isinstance(name, str) and any(fnmatchcase(name, p) for p in self.allow)

    def mcp_allowed(self, tool: Mapping[str, Any]) -> bool:
        label, url = tool.get("server_label"), tool.get("server_url")
        for allowed_label, allowed_url in self.mcp_servers:
            if label == allowed_label and (
                allowed_url is None or (isinstance(url, str) and fnmatchcase(url, allowed_url))
            ):
                return True
        return False

    def schema_for(self, name: str) -> Any:
        for pattern, validator in self.schemas:
            if fnmatchcase(name, pattern):
                return validator
        return None


def _tool_name(tool: Mapping[str, Any]) -> str:
    if tool.get("type") == "mcp":
        return f"mcp:{tool.get('server_label')}"
    return str(tool.get("name"))


class ToolSession(Handler):
    """Per-session state: the calls blocked so far and the items the relay made upstream."""

    def __init__(self, policy: ToolAllowList) -> None:
        self.p = policy
        self.blocked_items: set[str] = set()
        self.blocked_calls: set[str] = set()
        self.checked_items: dict[str, str] = {}  # item id → tool name, for calls validated at `.done`
        self.relay_items: set[str] = set()
        self.relay_event_ids: set[str] = set()

    def handle(self, event: Event, audit: AuditSink) -> Verdict | None:
        if event.direction is C2U:
            if event.type == "conversation.item.create":
                return self._client_item(event, audit)
            return self._client_tools(event, audit)
        return self._upstream(event, audit)

    # -- client side ---------------------------------------------------------------------------

    def _client_tools(self, event: Event, audit: AuditSink) -> Verdict | None:
        p = self.p
        key = _CONTAINER[event.type]
        payload = event.payload()
        container = payload.get(key)
        if not isinstance(container, Mapping):
            return None
        tools = container.get("tools")
        if not isinstance(tools, list):
            return None
        kept: list[Any] = []
        removed: list[str] = []
        changed = False
        for i, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                removed.append(f"{key}.tools[{i}]")
                continue
            is_mcp = tool.get("type") == "mcp"
            ok = (
                p.mcp_allowed(tool)
                if is_mcp
                else tool.get("type", "function") == "function" and (p.function_allowed(tool.get("name")))
            )
            if not ok:
                if p.reject:
                    audit.add(p.policy_id, "reject", f"{key}.tools[{i}]", event.type, tool=_tool_name(tool))
                    return self._refuse(
                        payload,
                        f"The tool '{_tool_name(tool)}' is not allowed by relay policy.",
                        "tool_not_allowed",
                        f"{key}.tools[{i}]",
                    )
                audit.add(p.policy_id, "strip_tool", f"{key}.tools[{i}]", event.type, tool=_tool_name(tool))
                removed.append(_tool_name(tool))
                changed = True
                continue
            if (
                is_mcp
                and p.require_approval != "client"
                and tool.get("require_approval") != p.require_approval
            ):
                tool = {**tool, "require_approval": p.require_approval}
                audit.add(
                    p.policy_id,
                    "enforce_approval",
                    f"{key}.tools[{i}].require_approval",
                    event.type,
                    tool=_tool_name(tool),
                    value=p.require_approval,
                )
                changed = True
            kept.append(tool)
        if not changed:
            return None
        new_container = {**container, "tools": kept}
        choice = container.get("tool_choice")
        if isinstance(choice, Mapping) and (
            (choice.get("type") == "function" and f"{choice.get('name')}" in removed)
            or (choice.get("type") == "mcp" and f"mcp:{choice.get('server_label')}" in removed)
        ):
            del new_container["tool_choice"]
            audit.add(p.policy_id, "strip_field", f"{key}.tool_choice", event.type)
        return Forward(event.with_payload({**payload, key: new_container}))

    def _client_item(self, event: Event, audit: AuditSink) -> Verdict | None:
        item = event.payload().get("item")
        if isinstance(item, Mapping) and item.get("type") == "function_call_output":
            if item.get("call_id") in self.blocked_calls:
                audit.add(self.p.policy_id, "reject", "item.call_id", event.type)
                return self._refuse(
                    event.payload(),
                    "This function call was blocked by relay policy.",
                    "tool_not_allowed",
                    "item.call_id",
                )
        return None

    def _refuse(self, payload: Mapping[str, Any], message: str, code: str, param: str) -> Reply:
        eid = payload.get("event_id")
        return Reply(
            (error_event(code, message, param=param, event_id=eid if isinstance(eid, str) else None),), code
        )

    # -- model side ----------------------------------------------------------------------------

    def _upstream(self, event: Event, audit: AuditSink) -> Verdict | None:
        etype = event.type
        payload = event.payload()
        if etype == "response.function_call_arguments.delta":
            item_id = payload.get("item_id")
            if item_id in self.blocked_items or item_id in self.checked_items:
                return Drop("tool_call_withheld")
            return None
        if etype == "response.function_call_arguments.done":
            return self._arguments_done(event, payload, audit)
        if etype == "response.done":
            return self._response_done(event, payload, audit)
        if etype == "error":
            err = payload.get("error")
            if isinstance(err, Mapping) and err.get("event_id") in self.relay_event_ids:
                return Drop("relay_item_error")
            return None
        item = payload.get("item")
        if not isinstance(item, Mapping):
            return None
        item_id = item.get("id")
        if item_id in self.relay_items:
            return Drop("relay_item_echo")
        if item.get("type") != "function_call":
            return None
        if item_id not in self.blocked_items and not self.p.function_allowed(item.get("name")):
            self._block(item, audit, etype, "block_call")
        if item_id in self.blocked_items:
            if etype == "response.output_item.done":
                return Reply((self._error_output(item),), "tool_not_allowed")
            return Drop("tool_not_allowed")
        if etype == "response.output_item.added" and self.p.schema_for(str(item.get("name"))) is not None:
            self.checked_items[str(item_id)] = str(item.get("name"))
        return None

    def _block(self, item: Mapping[str, Any], audit: AuditSink, etype: str, action: str) -> None:
        self.blocked_items.add(str(item.get("id")))
        if item.get("call_id"):
            self.blocked_calls.add(str(item.get("call_id")))
        audit.add(self.p.policy_id, action, "item.name", etype, tool=str(item.get("name")))

    def _arguments_done(self, event: Event, payload: Mapping[str, Any], audit: AuditSink) -> Verdict | None:
        item_id = payload.get("item_id")
        if item_id in self.blocked_items:
            return Drop("tool_not_allowed")
        name = payload.get("name")
        if name is not None and not self.p.function_allowed(name):
            self._block(
                {"id": item_id, "call_id": payload.get("call_id"), "name": name},
                audit,
                event.type,
                "block_call",
            )
            return Drop("tool_not_allowed")
        if item_id in self.checked_items:
            # Beta `.done` events carry no name: use the one seen at `response.output_item.added`.
            tool = self.checked_items.pop(str(item_id))
            validator = self.p.schema_for(tool)
            if validator is not None and not self._arguments_ok(validator, payload.get("arguments")):
                self._block(
                    {"id": item_id, "call_id": payload.get("call_id"), "name": tool},
                    audit,
                    event.type,
                    "invalid_arguments",
                )
                return Drop("invalid_arguments")
        return None

    @staticmethod
    def _arguments_ok(validator: Any, arguments: Any) -> bool:
        if not isinstance(arguments, str):
            return False
        try:
            data = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return False
        return bool(validator.is_valid(data))

    def _response_done(self, event: Event, payload: Mapping[str, Any], audit: AuditSink) -> Verdict | None:
        response = payload.get("response")
        if not isinstance(response, Mapping) or not self.blocked_items:
            return None
        output = response.get("output")
        if not isinstance(output, list):
            return None
        kept = [x for x in output if not (isinstance(x, Mapping) and x.get("id") in self.blocked_items)]
        if len(kept) == len(output):
            return None
        audit.add(
            self.p.policy_id, "strip_call", "response.output", event.type, count=len(output) - len(kept)
        )
        return Forward(event.with_payload({**payload, "response": {**response, "output": kept}}))

    def _error_output(self, item: Mapping[str, Any]) -> dict[str, Any]:
        item_id = "relay_" + secrets.token_hex(12)
        event_id = "event_relay_" + secrets.token_hex(8)
        self.relay_items.add(item_id)
        self.relay_event_ids.add(event_id)
        output = {"error": f"The tool '{item.get('name')}' is not available (blocked by relay policy)."}
        return {
            "type": "conversation.item.create",
            "event_id": event_id,
            "item": {
                "id": item_id,
                "type": "function_call_output",
                "call_id": item.get("call_id"),
                "output": orjson.dumps(output).decode(),
            },
        }
