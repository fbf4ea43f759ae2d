"""Session configuration: defaults, ``session.update`` validation, rendering per dialect.

Rules of this module:
- One internal shape, the GA session object (``audio.input.*``, ``audio.output.*``,
  ``output_modalities``...). Beta updates are translated into it and beta sessions are rendered
  out of it, so both dialects share one validator.
- ``session.updated`` carries the full effective config. An update changes only the fields it
  names; ``turn_detection`` of the same ``type`` is merged field by field, a new type starts from
  that type's defaults.
- A rejected update changes nothing: validation runs on a copy and raises ``SessionError``
  (code, message, param) which the session turns into an ``error`` event.
- Defaults are those of real ``session.created`` payloads (server_vad threshold 0.5, prefix 300 ms,
  silence 200 ms).
"""

from __future__ import annotations

import copy
from typing import Any

from relay.sim.audio import BETA_FORMATS, GA_FORMATS, PCM16, AudioFormat

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Your voice and personality should be warm and "
    "engaging. Talk quickly."
)
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 200}

GA_KEYS = {
    "type", "model", "output_modalities", "instructions", "tools", "tool_choice",
    "max_output_tokens", "tracing", "truncation", "prompt", "include", "audio",
    "parallel_tool_calls", "reasoning",
}  # fmt: skip
BETA_KEYS = {
    "model", "modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "turn_detection", "tools", "tool_choice", "temperature",
    "max_response_output_tokens", "speed", "tracing", "input_audio_noise_reduction", "include",
}  # fmt: skip
TRANSCRIPTION_BETA_KEYS = {
    "input_audio_format", "input_audio_transcription", "turn_detection", "input_audio_noise_reduction", "include",
}  # fmt: skip
READ_ONLY_KEYS = {"id", "object", "expires_at", "client_secret"}


class SessionError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _unknown(param: str) -> SessionError:
    return SessionError("unknown_parameter", f"Unknown parameter: '{param}'.", param)


def _invalid(param: str, value: Any, expected: str) -> SessionError:
    return SessionError("invalid_value", f"Invalid value for '{param}': {value!r}. {expected}", param)


def server_vad_defaults() -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def semantic_vad_defaults() -> dict[str, Any]:
    return {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}


def default_session(session_id: str, model: str, kind: str, expires_at: int) -> dict[str, Any]:
    audio_in: dict[str, Any] = {
        "format": PCM16.ga(),
        "transcription": None,
        "noise_reduction": None,
        "turn_detection": server_vad_defaults(),
    }
    if kind == "transcription":
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": session_id,
            "expires_at": expires_at,
            "audio": {"input": audio_in},
            "include": None,
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "include": None,
        "audio": {
            "input": audio_in,
            "output": {"format": PCM16.ga(), "voice": "alloy", "speed": 1.0},
        },
    }


def input_format(cfg: dict[str, Any]) -> AudioFormat:
    return GA_FORMATS[cfg["audio"]["input"]["format"]["type"]]


def output_format(cfg: dict[str, Any]) -> AudioFormat:
    return GA_FORMATS[cfg["audio"]["output"]["format"]["type"]]


def voice_name(cfg: dict[str, Any]) -> str:
    v = cfg["audio"]["output"]["voice"]
    return v if isinstance(v, str) else str(v.get("id", "alloy"))


# --- validation -------------------------------------------------------------------------------


def _format(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") not in GA_FORMATS:
        got = value.get("type") if isinstance(value, dict) else value
        raise _invalid(f"{param}.type", got, "Supported values are: 'audio/pcm', 'audio/pcmu', 'audio/pcma'.")
    for key in value:
        if key not in ("type", "rate"):
            raise _unknown(f"{param}.{key}")
    if value["type"] == "audio/pcm":
        if value.get("rate", 24000) != 24000:
            raise _invalid(f"{param}.rate", value.get("rate"), "Only 24000 is supported.")
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": value["type"]}


def _turn_detection(old: Any, value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(param, value, "Expected an object or null.")
    kind = value.get("type", old.get("type") if isinstance(old, dict) else "server_vad")
    if kind == "server_vad":
        base = server_vad_defaults()
        allowed = set(base)
    elif kind == "semantic_vad":
        base = semantic_vad_defaults()
        allowed = set(base)
    else:
        raise _invalid(f"{param}.type", kind, "Supported values are: 'server_vad', 'semantic_vad'.")
    if isinstance(old, dict) and old.get("type") == kind:
        base.update(old)
    for key, v in value.items():
        if key not in allowed:
            raise _unknown(f"{param}.{key}")
        if key == "threshold" and not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
            raise _invalid(f"{param}.threshold", v, "Expected a number between 0 and 1.")
        if key in ("prefix_padding_ms", "silence_duration_ms") and not (isinstance(v, int) and v >= 0):
            raise _invalid(f"{param}.{key}", v, "Expected a non-negative integer.")
        if key in ("create_response", "interrupt_response") and not isinstance(v, bool):
            raise _invalid(f"{param}.{key}", v, "Expected a boolean.")
        if key == "eagerness" and v not in SEMANTIC_SILENCE_MS:
            raise _invalid(f"{param}.eagerness", v, "Supported values are: 'low', 'medium', 'high', 'auto'.")
        base[key] = v
    base["type"] = kind
    return base


def _tools(value: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _invalid(param, value, "Expected an array of tools.")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise _invalid(f"{param}[{i}]", tool, "Expected an object.")
        ttype = tool.get("type", "function")
        if ttype not in ("function", "mcp"):
            raise _invalid(f"{param}[{i}].type", ttype, "Supported values are: 'function', 'mcp'.")
        if ttype == "function" and not isinstance(tool.get("name"), str):
            raise SessionError(
                "missing_required_parameter",
                f"Missing required parameter: '{param}[{i}].name'.",
                f"{param}[{i}].name",
            )
        out.append({"type": ttype, **{k: v for k, v in tool.items() if k != "type"}})
    return out


def _tool_choice(value: Any, param: str) -> Any:
    if value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict) and value.get("type") in ("function", "mcp"):
        return value
    raise _invalid(param, value, "Supported values are: 'none', 'auto', 'required' or a tool object.")


def _max_tokens(value: Any, param: str) -> Any:
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
        return value
    raise _invalid(param, value, "Expected an integer between 1 and 4096, or 'inf'.")


def _voice(cfg: dict[str, Any], value: Any, param: str, audio_produced: bool) -> None:
    if not (isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("id"), str))):
        raise _invalid(param, value, "Expected a voice name or {'id': ...}.")
    out = cfg["audio"]["output"]
    if audio_produced and value != out["voice"]:
        raise SessionError(
            "cannot_update_voice",
            "Cannot update a conversation's voice if assistant audio is present.",
            param,
        )
    out["voice"] = value


def _speed(cfg: dict[str, Any], value: Any, param: str) -> None:
    if not (isinstance(value, int | float) and 0.25 <= value <= 1.5):
        raise _invalid(param, value, "Expected a number between 0.25 and 1.5.")
    cfg["audio"]["output"]["speed"] = float(value)


def _transcription(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(param, value, "Expected an object or null.")
    for key in value:
        if key not in ("model", "language", "prompt", "languages", "keywords", "delay"):
            raise _unknown(f"{param}.{key}")
    return dict(value)


def _modalities(value: Any, param: str) -> list[str]:
    if value in (["audio"], ["text"]):
        return list(value)
    raise _invalid(param, value, "Supported values are: ['audio'] or ['text'].")


def apply_ga(cfg: dict[str, Any], update: Any, audio_produced: bool) -> dict[str, Any]:
    """The effective GA config after ``update`` (a ``session.update.session`` object)."""
    if not isinstance(update, dict):
        raise _invalid("session", update, "Expected an object.")
    if "type" not in update:
        raise SessionError(
            "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
        )
    if update["type"] != cfg["type"]:
        raise _invalid("session.type", update["type"], f"This session's type is '{cfg['type']}'.")
    new = copy.deepcopy(cfg)
    for key, value in update.items():
        p = f"session.{key}"
        if key in READ_ONLY_KEYS or key == "type":
            continue
        if key not in GA_KEYS or (cfg["type"] == "transcription" and key not in ("audio", "include")):
            raise _unknown(p)
        if key == "audio":
            _apply_ga_audio(new, value, audio_produced)
        elif key == "output_modalities":
            new[key] = _modalities(value, p)
        elif key == "instructions":
            if not isinstance(value, str):
                raise _invalid(p, value, "Expected a string.")
            new[key] = value
        elif key == "tools":
            new[key] = _tools(value, p)
        elif key == "tool_choice":
            new[key] = _tool_choice(value, p)
        elif key == "max_output_tokens":
            new[key] = _max_tokens(value, p)
        elif key == "model":
            if not isinstance(value, str):
                raise _invalid(p, value, "Expected a string.")
            new[key] = value
        else:
            new[key] = value
    return new


def _apply_ga_audio(new: dict[str, Any], value: Any, audio_produced: bool) -> None:
    if not isinstance(value, dict):
        raise _invalid("session.audio", value, "Expected an object.")
    for side, body in value.items():
        p = f"session.audio.{side}"
        if side not in new["audio"]:
            raise _unknown(p)
        if not isinstance(body, dict):
            raise _invalid(p, body, "Expected an object.")
        target = new["audio"][side]
        for key, v in body.items():
            kp = f"{p}.{key}"
            if side == "input" and key == "format":
                target[key] = _format(v, kp)
            elif side == "input" and key == "turn_detection":
                target[key] = _turn_detection(target.get(key), v, kp)
            elif side == "input" and key == "transcription":
                target[key] = _transcription(v, kp)
            elif side == "input" and key == "noise_reduction":
                target[key] = v
            elif side == "output" and key == "format":
                target[key] = _format(v, kp)
            elif side == "output" and key == "voice":
                _voice(new, v, kp, audio_produced)
            elif side == "output" and key == "speed":
                _speed(new, v, kp)
            else:
                raise _unknown(kp)


def _beta_format(value: Any, param: str) -> dict[str, Any]:
    if value not in BETA_FORMATS:
        raise _invalid(param, value, "Supported values are: 'pcm16', 'g711_ulaw', 'g711_alaw'.")
    return BETA_FORMATS[value].ga()


def apply_beta(
    cfg: dict[str, Any], update: Any, audio_produced: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    """The effective config after a beta ``session.update``; ``extra`` keeps beta-only fields."""
    if not isinstance(update, dict):
        raise _invalid("session", update, "Expected an object.")
    new = copy.deepcopy(cfg)
    a_in, a_out = new["audio"]["input"], new["audio"].get("output", {})
    for key, value in update.items():
        p = f"session.{key}"
        if key in READ_ONLY_KEYS:
            continue
        if key not in BETA_KEYS or (cfg["type"] == "transcription" and key not in TRANSCRIPTION_BETA_KEYS):
            raise _unknown(p)
        if key == "modalities":
            if not isinstance(value, list) or not value or not set(value) <= {"text", "audio"}:
                raise _invalid(p, value, "Supported values are: ['text'] or ['text', 'audio'].")
            new["output_modalities"] = ["audio"] if "audio" in value else ["text"]
        elif key == "voice":
            _voice(new, value, p, audio_produced)
        elif key == "speed":
            _speed(new, value, p)
        elif key == "input_audio_format":
            a_in["format"] = _beta_format(value, p)
        elif key == "output_audio_format":
            a_out["format"] = _beta_format(value, p)
        elif key == "input_audio_transcription":
            a_in["transcription"] = _transcription(value, p)
        elif key == "input_audio_noise_reduction":
            a_in["noise_reduction"] = value
        elif key == "turn_detection":
            a_in["turn_detection"] = _turn_detection(a_in["turn_detection"], value, p)
        elif key == "tools":
            new["tools"] = _tools(value, p)
        elif key == "tool_choice":
            new["tool_choice"] = _tool_choice(value, p)
        elif key == "max_response_output_tokens":
            new["max_output_tokens"] = _max_tokens(value, p)
        elif key == "temperature":
            if not (isinstance(value, int | float) and 0.6 <= value <= 1.2):
                raise _invalid(p, value, "Expected a number between 0.6 and 1.2.")
            extra["temperature"] = float(value)
        elif key == "instructions":
            if not isinstance(value, str):
                raise _invalid(p, value, "Expected a string.")
            new["instructions"] = value
        else:
            new[key] = value
    return new


# --- rendering --------------------------------------------------------------------------------


def render(cfg: dict[str, Any], beta: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``session`` object of ``session.created`` / ``session.updated`` for a dialect."""
    if not beta:
        return copy.deepcopy(cfg)
    a_in = cfg["audio"]["input"]
    td = a_in["turn_detection"]
    if td is not None:
        td = {k: v for k, v in td.items() if k != "idle_timeout_ms"}
    if cfg["type"] == "transcription":
        return {
            "id": cfg["id"],
            "object": "realtime.transcription_session",
            "expires_at": cfg["expires_at"],
            "modalities": ["text"],
            "input_audio_format": input_format(cfg).kind,
            "input_audio_transcription": copy.deepcopy(a_in["transcription"]),
            "turn_detection": td,
            "input_audio_noise_reduction": a_in.get("noise_reduction"),
            "include": cfg.get("include"),
            # The beta SDK's TranscriptionSession requires it; no ephemeral key exists here.
            "client_secret": {"value": "", "expires_at": cfg["expires_at"]},
        }
    out: dict[str, Any] = {
        "id": cfg["id"],
        "object": "realtime.session",
        "model": cfg.get("model"),
        "expires_at": cfg["expires_at"],
        "modalities": ["audio", "text"] if cfg.get("output_modalities") == ["audio"] else ["text"],
        "instructions": cfg.get("instructions", ""),
        "voice": voice_name(cfg),
        "input_audio_format": input_format(cfg).kind,
        "output_audio_format": output_format(cfg).kind,
        "input_audio_transcription": copy.deepcopy(a_in["transcription"]),
        "turn_detection": td,
        "tools": [t for t in copy.deepcopy(cfg.get("tools", [])) if t.get("type") == "function"],
        "tool_choice": cfg["tool_choice"] if isinstance(cfg.get("tool_choice"), str) else "auto",
        "temperature": extra.get("temperature", 0.8),
        "max_response_output_tokens": cfg.get("max_output_tokens", "inf"),
        "speed": cfg["audio"]["output"]["speed"],
        "tracing": cfg.get("tracing"),
        "input_audio_noise_reduction": a_in.get("noise_reduction"),
        "include": cfg.get("include"),
        "client_secret": None,
    }
    return out
