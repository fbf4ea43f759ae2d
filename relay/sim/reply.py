"""What the simulated model answers: a deterministic rule instead of a language model.

Rules of this module (the same rules are in docs/simulator.md, "Reply rule"):
1. Response ``instructions`` of the form ``say: <text>`` (case-insensitive) → say ``<text>``.
2. Else ``fixed_reply`` (server config) when set.
3. Else, by the last item of the context:
   - ``function_call_output`` → ``The result is <output>.``
   - a user message → the tool rule below, else ``You said: <text>`` (text, or what the model
     "heard" of the audio: the scripted transcript).
   - anything else, or nothing → ``Hello! How can I help you?``
Tool rule, applied to the user's text when ``tool_choice`` is not ``none`` and function tools are
configured: a forced ``{"type": "function", "name": N}`` calls N; otherwise the first tool whose
name appears in the text (case-insensitive, ``_`` may be spoken as a space) is called; with
``tool_choice: required`` and no match the first tool is called. Arguments are the first
``{...}`` in the text that parses as a JSON object (re-serialised compactly), else ``{}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from relay.sim.items import Item

GREETING = "Hello! How can I help you?"
_SAY = re.compile(r"^\s*say\s*:\s*(.+?)\s*$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class Plan:
    kind: str  # "message" or "function_call"
    text: str = ""
    name: str = ""
    arguments: str = "{}"


def _first_json_object(text: str) -> str | None:
    dec = json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        try:
            obj, _ = dec.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return json.dumps(obj, separators=(",", ":"))
        start = text.find("{", start + 1)
    return None


def pick_tool(text: str, tools: list[dict[str, Any]], tool_choice: Any) -> str | None:
    names: list[str] = [
        str(t["name"]) for t in tools if t.get("type", "function") == "function" and t.get("name")
    ]
    if not names or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        forced = str(tool_choice.get("name"))
        return forced if forced in names else None
    low = text.lower()
    for name in names:
        n = name.lower()
        if n in low or n.replace("_", " ") in low:
            return name
    if tool_choice == "required":
        return names[0]
    return None


def plan_reply(
    context: list[Item],
    tools: list[dict[str, Any]],
    tool_choice: Any,
    instructions: str | None,
    fixed_reply: str | None,
) -> Plan:
    if instructions:
        m = _SAY.match(instructions)
        if m:
            return Plan("message", m.group(1))
    if fixed_reply:
        return Plan("message", fixed_reply)
    last = context[-1] if context else None
    if last is None:
        return Plan("message", GREETING)
    if last.type == "function_call_output":
        return Plan("message", f"The result is {(last.output or '').strip()[:500]}.")
    if last.type == "message" and last.role == "user":
        text = last.text_of().strip()
        name = pick_tool(text, tools, tool_choice)
        if name is not None:
            return Plan("function_call", name=name, arguments=_first_json_object(text) or "{}")
        return Plan("message", f"You said: {text}" if text else GREETING)
    return Plan("message", GREETING)
