"""Client-supplied objects (items, ``response.create`` parameters) turned into session records.

Rules of this module:
- Every malformed field raises ``ClientError`` naming the ``param`` path the way OpenAI does
  (``item.content[0].audio``), so the session answers with an ``error`` event and changes nothing.
- Assistant audio cannot be inserted by a client (OpenAI refuses it too).
- Response overrides follow the dialect: GA ``output_modalities`` / ``audio.output.*`` /
  ``max_output_tokens``; beta ``modalities`` / ``voice`` / ``output_audio_format`` /
  ``max_response_output_tokens`` / ``temperature``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.sim import sessionconfig as sc
from relay.sim.audio import BETA_FORMATS, GA_FORMATS, AudioFormat
from relay.sim.items import Item, Part, new_id
from relay.sim.response import RunParams
from relay.sim.usage import context_segments

if TYPE_CHECKING:
    from relay.sim.session import SimSession


class ClientError(Exception):
    """A client event the session refuses; becomes an ``error`` event."""

    def __init__(self, code: str | None, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


_USER_PARTS = {"input_text", "input_audio", "input_image"}


def _part(
    raw: Any, role: str, beta: bool, fmt: AudioFormat, transcribe: Callable[[int], str], p: str
) -> Part:
    if not isinstance(raw, dict):
        raise ClientError("invalid_value", f"Invalid '{p}': expected an object.", p)
    ptype = raw.get("type")
    if role in ("user", "system") and ptype in _USER_PARTS and (role == "user" or ptype == "input_text"):
        if ptype == "input_text":
            text = raw.get("text")
            if not isinstance(text, str):
                raise ClientError(
                    "missing_required_parameter", f"Missing required parameter: '{p}.text'.", f"{p}.text"
                )
            return Part("input_text", text=text)
        if ptype == "input_image":
            return Part("input_image")
        audio = raw.get("audio")
        part = Part("input_audio", transcript=raw.get("transcript"))
        if audio is not None:
            try:
                part.audio = bytearray(base64.b64decode(audio, validate=True))
            except (binascii.Error, ValueError, TypeError):
                raise ClientError(
                    "invalid_value", f"Invalid '{p}.audio'. Expected base64-encoded audio.", f"{p}.audio"
                ) from None
            part.bytes_per_second = int(fmt.bytes_per_ms * 1000)
        return part
    if role == "assistant" and ptype in (("text",) if beta else ("output_text",)):
        text = raw.get("text")
        if not isinstance(text, str):
            raise ClientError(
                "missing_required_parameter", f"Missing required parameter: '{p}.text'.", f"{p}.text"
            )
        return Part("output_text", text=text)
    if role == "assistant" and ptype in ("audio", "output_audio"):
        raise ClientError(
            "invalid_value", "Assistant audio content cannot be created by the client.", f"{p}.type"
        )
    raise ClientError("invalid_value", f"Invalid value for '{p}.type': {ptype!r}.", f"{p}.type")


def item_from_client(
    raw: dict[str, Any], beta: bool, fmt: AudioFormat, transcribe: Callable[[int], str]
) -> Item:
    itype = raw.get("type", "message")
    iid = raw.get("id") or new_id("item_")
    if not isinstance(iid, str):
        raise ClientError("invalid_value", "Invalid 'item.id': expected a string.", "item.id")
    if itype == "message":
        role = raw.get("role")
        if role not in ("user", "system", "assistant"):
            raise ClientError("invalid_value", f"Invalid value for 'item.role': {role!r}.", "item.role")
        content = raw.get("content")
        if not isinstance(content, list):
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'item.content'.", "item.content"
            )
        parts = [_part(c, role, beta, fmt, transcribe, f"item.content[{i}]") for i, c in enumerate(content)]
        item = Item(iid, "message", role=role, content=parts)
        for part in parts:
            if part.type == "input_audio" and part.transcript is None and part.audio:
                item.heard = transcribe(round(len(part.audio) * 1000 / part.bytes_per_second))
        return item
    if itype == "function_call":
        name, args = raw.get("name"), raw.get("arguments", "")
        if not isinstance(name, str):
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'item.name'.", "item.name"
            )
        return Item(
            iid,
            "function_call",
            call_id=raw.get("call_id") or new_id("call_"),
            name=name,
            arguments=str(args),
        )
    if itype == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str):
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'item.call_id'.", "item.call_id"
            )
        if not isinstance(output, str):
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'item.output'.", "item.output"
            )
        return Item(iid, "function_call_output", call_id=call_id, output=output)
    raise ClientError("invalid_value", f"Invalid value for 'item.type': {itype!r}.", "item.type")


def response_params(sess: SimSession, resp: dict[str, Any]) -> RunParams:
    cfg = sess.cfg
    out = cfg["audio"]["output"]
    modalities = list(cfg["output_modalities"])
    voice_field = out["voice"]
    fmt = sc.output_format(cfg)
    temperature = sess.beta_extra.get("temperature", 0.8)
    max_tokens = cfg.get("max_output_tokens", "inf")
    if sess.beta:
        if "modalities" in resp:
            mods = resp["modalities"]
            if not isinstance(mods, list) or not set(mods) <= {"text", "audio"} or not mods:
                raise ClientError(
                    "invalid_value",
                    f"Invalid value for 'response.modalities': {mods!r}.",
                    "response.modalities",
                )
            modalities = ["audio"] if "audio" in mods else ["text"]
        if "voice" in resp:
            voice_field = resp["voice"]
        if "output_audio_format" in resp:
            if resp["output_audio_format"] not in BETA_FORMATS:
                raise ClientError(
                    "invalid_value", "Invalid 'response.output_audio_format'.", "response.output_audio_format"
                )
            fmt = BETA_FORMATS[resp["output_audio_format"]]
        if "temperature" in resp:
            temperature = resp["temperature"]
        if "max_response_output_tokens" in resp:
            max_tokens = sc._max_tokens(
                resp["max_response_output_tokens"], "response.max_response_output_tokens"
            )
    else:
        if "output_modalities" in resp:
            modalities = sc._modalities(resp["output_modalities"], "response.output_modalities")
        r_out = (resp.get("audio") or {}).get("output") or {}
        if "voice" in r_out:
            voice_field = r_out["voice"]
        if "format" in r_out:
            fmt = GA_FORMATS[sc._format(r_out["format"], "response.audio.output.format")["type"]]
        if "max_output_tokens" in resp:
            max_tokens = sc._max_tokens(resp["max_output_tokens"], "response.max_output_tokens")
    instructions = resp.get("instructions", cfg.get("instructions") or "")
    if not isinstance(instructions, str):
        raise ClientError(
            "invalid_value", "Invalid 'response.instructions': expected a string.", "response.instructions"
        )
    tools = sc._tools(resp["tools"], "response.tools") if "tools" in resp else list(cfg.get("tools", []))
    tool_choice = (
        sc._tool_choice(resp["tool_choice"], "response.tool_choice")
        if "tool_choice" in resp
        else cfg.get("tool_choice", "auto")
    )
    metadata = resp.get("metadata")
    conversation = resp.get("conversation", "auto")
    context = sess.context_for(resp)
    voice = voice_field if isinstance(voice_field, str) else str((voice_field or {}).get("id", "alloy"))
    return RunParams(
        plan=sess.plan(context, tools, tool_choice, instructions),
        modalities=modalities,
        voice=voice,
        speed=float(out.get("speed", 1.0)),
        out_format=fmt,
        segments=context_segments(instructions, tools, context),
        in_conversation=conversation != "none",
        metadata=metadata if isinstance(metadata, dict) else None,
        max_output_tokens=max_tokens,
        temperature=float(temperature),
        source=sess.opts.voice_source,
        delta_ms=sess.opts.delta_ms,
        voice_field=voice_field,
    )
