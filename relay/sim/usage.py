"""The simulator's token rules, exact and documented (docs/simulator.md, "Token rules").

Rules of this module:
- Text: ``ceil(characters / 4)`` tokens (0 for an empty string).
- Input audio (user audio, and assistant audio when it is context for a later response):
  10 tokens per second, ``ceil(bytes * 10 / bytes_per_second)`` of the stored item audio.
- Output audio: 20 tokens per second, ``ceil(bytes * 20 / bytes_per_second)`` of the audio the
  response generated (sent), so a cancelled response bills only what it produced.
- Output text: the text tokens of the text or audio transcript the response generated.
- A response's input is a list of ``Segment``: instructions, tools, then each context item in
  order. ``cached_tokens`` is the token count of the longest leading run of segments equal to
  the previous response's input segments, rounded down to a multiple of 64; the cached tokens
  are attributed to text/audio by walking that prefix in order.
- No special-token overheads: numbers can be checked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from relay.sim.items import Item

CACHE_BLOCK = 64


@dataclass(frozen=True, slots=True)
class Segment:
    key: str  # what the segment is: "instructions", "tools", or an item id plus a version
    kind: str  # "text" or "audio"
    tokens: int


def text_tokens(text: str) -> int:
    return -(-len(text) // 4)


def input_audio_tokens(nbytes: int, bytes_per_second: int) -> int:
    return -(-nbytes * 10 // bytes_per_second) if nbytes > 0 else 0


def output_audio_tokens(nbytes: int, bytes_per_second: int) -> int:
    return -(-nbytes * 20 // bytes_per_second) if nbytes > 0 else 0


def cached_split(context: list[Segment], previous: list[Segment] | None) -> tuple[int, int, int]:
    """(cached total, cached text, cached audio) per the prefix rule above."""
    if not previous:
        return 0, 0, 0
    shared = 0
    for seg, old in zip(context, previous, strict=False):
        if seg != old:
            break
        shared += seg.tokens
    cached = shared // CACHE_BLOCK * CACHE_BLOCK
    left = cached
    text = audio = 0
    for seg in context:
        if left <= 0:
            break
        take = min(left, seg.tokens)
        if seg.kind == "audio":
            audio += take
        else:
            text += take
        left -= take
    return cached, text, audio


def response_usage(
    context: list[Segment],
    previous: list[Segment] | None,
    out_text: int,
    out_audio: int,
    *,
    beta: bool = False,
) -> dict[str, Any]:
    """The ``response.done.response.usage`` object for one response."""
    in_text = sum(s.tokens for s in context if s.kind != "audio")
    in_audio = sum(s.tokens for s in context if s.kind == "audio")
    cached, c_text, c_audio = cached_split(context, previous)
    input_tokens = in_text + in_audio
    output_tokens = out_text + out_audio
    in_details: dict[str, Any] = {
        "text_tokens": in_text,
        "audio_tokens": in_audio,
        "cached_tokens": cached,
        "cached_tokens_details": {"text_tokens": c_text, "audio_tokens": c_audio},
    }
    if not beta:
        in_details["image_tokens"] = 0
        in_details["cached_tokens_details"]["image_tokens"] = 0
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": in_details,
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def transcription_usage(audio_tokens: int, transcript: str) -> dict[str, Any]:
    """Token-billed ASR usage for ``input_audio_transcription.completed``."""
    out = text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio_tokens,
        "output_tokens": out,
        "total_tokens": audio_tokens + out,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
    }


def context_segments(instructions: str, tools: list[dict[str, Any]], context: list[Item]) -> list[Segment]:
    """A response's input as segments: instructions, tools (compact JSON), then each item part."""
    segs = [Segment("instructions:" + instructions, "text", text_tokens(instructions))]
    if tools:
        blob = orjson.dumps(tools).decode()
        segs.append(Segment("tools:" + blob, "text", text_tokens(blob)))
    for it in context:
        key = f"{it.id}:{it.version}"
        if it.type == "function_call":
            segs.append(Segment(key, "text", text_tokens((it.name or "") + (it.arguments or ""))))
        elif it.type == "function_call_output":
            segs.append(Segment(key, "text", text_tokens(it.output or "")))
        else:
            for n, p in enumerate(it.content):
                if p.audio:
                    segs.append(
                        Segment(f"{key}:{n}", "audio", input_audio_tokens(len(p.audio), p.bytes_per_second))
                    )
                else:
                    segs.append(Segment(f"{key}:{n}", "text", text_tokens(p.text or p.transcript or "")))
    return segs
