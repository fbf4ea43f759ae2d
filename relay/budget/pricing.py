"""Prices (pricing.yaml) and the cost of a usage block, exactly.

Rules of this module:
- Prices are data, not code: ``pricing.yaml`` ships next to this module and ``budgets.pricing``
  in relay.yaml points at an edited copy. Prices are USD per 1M tokens (``per_minute`` for
  duration-billed transcription), read as ``Decimal`` from their text so 0.06 stays 0.06.
- A model id is looked up as written, then without a trailing ``-YYYY-MM-DD`` snapshot date, then
  the file's ``fallback_model`` applies (so an unknown model is never free).
- Costs are ``Decimal`` and exact; ``relay.budget.units.usd_to_nano`` turns them into ledger units.

The cost of one ``response.done`` usage block (see docs/budgets.md, "Formulas"):
    cached_k   = cached tokens of kind k (text, audio, image); a subset of that kind's input
    input cost = Σ_k (input_k − cached_k) × in_k + cached_k × cached_in_k
                 + unattributed input × max_k in_k
    output     = text_out × out_text + audio_out × out_audio + unattributed output × max out
    USD        = (input cost + output cost) / 1,000,000
When ``cached_tokens_details`` is missing, cached tokens are assigned to text first, then audio,
then image: the smallest discount first, so an incomplete usage block is never under-billed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from relay.errors import ConfigError

MILLION = Decimal(1_000_000)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Rates:
    input: Decimal
    cached_input: Decimal
    output: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ModelPrices:
    name: str
    text: Rates
    audio: Rates
    image: Rates | None
    context_window: int
    max_output_tokens: int

    @property
    def max_input_rate(self) -> Decimal:
        rates = [self.text.input, self.audio.input] + ([self.image.input] if self.image else [])
        return max(rates)

    @property
    def max_output_rate(self) -> Decimal:
        return max(r for r in (self.text.output, self.audio.output) if r is not None)


@dataclass(frozen=True, slots=True)
class TranscriptionPrices:
    name: str
    text_input: Decimal = Decimal(0)
    audio_input: Decimal = Decimal(0)
    text_output: Decimal = Decimal(0)
    per_minute: Decimal | None = None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """One response's usage, split into disjoint kinds (their sum is ``total``)."""

    input_text: int = 0
    """uncached text input"""
    input_text_cached: int = 0
    input_audio: int = 0
    input_audio_cached: int = 0
    input_image: int = 0
    input_image_cached: int = 0
    input_other: int = 0
    """input tokens the usage block did not attribute to a kind"""
    output_text: int = 0
    output_audio: int = 0
    output_other: int = 0

    @property
    def input_total(self) -> int:
        return (
            self.input_text
            + self.input_text_cached
            + self.input_audio
            + self.input_audio_cached
            + self.input_image
            + self.input_image_cached
            + self.input_other
        )

    @property
    def output_total(self) -> int:
        return self.output_text + self.output_audio + self.output_other

    @property
    def total(self) -> int:
        return self.input_total + self.output_total

    def kinds(self) -> dict[str, int]:
        """Non-zero kinds, the label values of ``relay_tokens_total{kind}``."""
        return {k: v for k in _KINDS if (v := getattr(self, k))}

    @classmethod
    def parse(cls, usage: Any) -> TokenUsage:
        """Read ``response.done.response.usage`` (GA or beta); missing or bad fields count as 0."""
        if not isinstance(usage, Mapping):
            return cls()
        ind = _map(usage.get("input_token_details"))
        outd = _map(usage.get("output_token_details"))
        text, audio, image = (
            _int(ind.get("text_tokens")),
            _int(ind.get("audio_tokens")),
            _int(ind.get("image_tokens")),
        )
        input_tokens = max(_int(usage.get("input_tokens")), text + audio + image)
        cached = min(_int(ind.get("cached_tokens")), input_tokens)
        cd = ind.get("cached_tokens_details")
        if isinstance(cd, Mapping):
            ct = min(_int(cd.get("text_tokens")), text)
            ca = min(_int(cd.get("audio_tokens")), audio)
            ci = min(_int(cd.get("image_tokens")), image)
        else:
            ct = min(cached, text)
            ca = min(cached - ct, audio)
            ci = min(cached - ct - ca, image)
        out_text, out_audio = _int(outd.get("text_tokens")), _int(outd.get("audio_tokens"))
        output_tokens = max(_int(usage.get("output_tokens")), out_text + out_audio)
        return cls(
            input_text=text - ct,
            input_text_cached=ct,
            input_audio=audio - ca,
            input_audio_cached=ca,
            input_image=image - ci,
            input_image_cached=ci,
            input_other=input_tokens - text - audio - image,
            output_text=out_text,
            output_audio=out_audio,
            output_other=output_tokens - out_text - out_audio,
        )


_KINDS = tuple(TokenUsage.__dataclass_fields__)


def response_cost(p: ModelPrices, u: TokenUsage) -> Decimal:
    """USD for one response's usage at ``p`` (the formula in the module docstring)."""
    image = p.image or Rates(p.max_input_rate, p.max_input_rate)
    per_million = (
        u.input_text * p.text.input
        + u.input_text_cached * p.text.cached_input
        + u.input_audio * p.audio.input
        + u.input_audio_cached * p.audio.cached_input
        + u.input_image * image.input
        + u.input_image_cached * image.cached_input
        + u.input_other * p.max_input_rate
        + u.output_text * (p.text.output or p.max_output_rate)
        + u.output_audio * (p.audio.output or p.max_output_rate)
        + u.output_other * p.max_output_rate
    )
    return per_million / MILLION


def transcription_cost(p: TranscriptionPrices, usage: Any) -> tuple[Decimal, dict[str, int]]:
    """USD and token kinds for ``conversation.item.input_audio_transcription.completed.usage``.

    ``{"type": "tokens", ...}`` is billed per token at the ASR model's rates;
    ``{"type": "duration", "seconds": s}`` at ``per_minute × s / 60``.
    """
    if not isinstance(usage, Mapping):
        return Decimal(0), {}
    if usage.get("type") == "duration":
        seconds = _dec(usage.get("seconds"))
        return (seconds * (p.per_minute or Decimal(0)) / 60 if seconds > 0 else Decimal(0)), {}
    ind = _map(usage.get("input_token_details"))
    text, audio = _int(ind.get("text_tokens")), _int(ind.get("audio_tokens"))
    other = max(0, _int(usage.get("input_tokens")) - text - audio)
    out = _int(usage.get("output_tokens"))
    per_million = (
        text * p.text_input
        + audio * p.audio_input
        + other * max(p.text_input, p.audio_input)
        + out * p.text_output
    )
    kinds = {"input_text": text, "input_audio": audio, "input_other": other, "output_text": out}
    return per_million / MILLION, {k: v for k, v in kinds.items() if v}


class Pricing:
    """The price table: models by id and transcription (ASR) models by id."""

    def __init__(
        self,
        models: dict[str, ModelPrices],
        transcription: dict[str, TranscriptionPrices],
        fallback_model: str,
        fallback_transcription: str,
        source: str = "",
        reserve_output_tokens: int = 4096,
    ) -> None:
        self.models = models
        self.reserve_output_tokens = reserve_output_tokens
        """Output tokens a response is assumed to produce when nothing caps it (see enforce.py)."""
        self.transcription_models = transcription
        self.fallback_model = models[fallback_model]
        self.fallback_transcription = transcription[fallback_transcription]
        self.source = source

    def model(self, model_id: str) -> ModelPrices:
        """Prices for ``model_id``: exact id, then without its snapshot date, then the fallback."""
        return _lookup(self.models, model_id) or self.fallback_model

    def knows_model(self, model_id: str) -> bool:
        return _lookup(self.models, model_id) is not None

    def transcription(self, model_id: str) -> TranscriptionPrices:
        return _lookup(self.transcription_models, model_id) or self.fallback_transcription

    @classmethod
    def load(cls, path: str | Path | None = None) -> Pricing:
        """Read ``path``, or the pricing.yaml shipped with the relay when it is empty or None.

        Raises:
            ConfigError: unreadable file or a malformed entry (named by its key path).
        """
        if path:
            p = Path(path)
            try:
                text = p.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"budgets.pricing: cannot read {p}: {exc.strerror}") from exc
            source = str(p)
        else:
            text = resources.files("relay.budget").joinpath("pricing.yaml").read_text(encoding="utf-8")
            source = "relay/budget/pricing.yaml"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
        return cls.from_mapping(data, source)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "pricing") -> Pricing:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the top level must be a mapping")
        models = {
            str(name): _model(str(name), node, f"{source}: models.{name}")
            for name, node in _map(data.get("models")).items()
        }
        asr = {
            str(name): _asr(str(name), node, f"{source}: transcription.{name}")
            for name, node in _map(data.get("transcription")).items()
        }
        fb_model = str(data.get("fallback_model", ""))
        fb_asr = str(data.get("fallback_transcription", ""))
        if fb_model not in models:
            raise ConfigError(f"{source}: fallback_model: must name one of the models")
        if fb_asr not in asr:
            raise ConfigError(f"{source}: fallback_transcription: must name one of the transcription models")
        reserve = data.get("reserve_output_tokens", 4096)
        if not isinstance(reserve, int) or isinstance(reserve, bool) or reserve <= 0:
            raise ConfigError(f"{source}: reserve_output_tokens: expected a positive whole number")
        return cls(models, asr, fb_model, fb_asr, source, reserve)


def _lookup(table: Mapping[str, Any], model_id: str) -> Any:
    hit = table.get(model_id)
    if hit is None:
        hit = table.get(_SNAPSHOT.sub("", model_id))
    return hit


def _model(name: str, node: Any, where: str) -> ModelPrices:
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    text = _rates(node.get("text"), f"{where}.text", output=True)
    audio = _rates(node.get("audio"), f"{where}.audio", output=True)
    image = (
        _rates(node.get("image"), f"{where}.image", output=False) if node.get("image") is not None else None
    )
    ctx, max_out = node.get("context_window"), node.get("max_output_tokens")
    for key, value in (("context_window", ctx), ("max_output_tokens", max_out)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{key}: expected a positive whole number")
    assert isinstance(ctx, int) and isinstance(max_out, int)
    return ModelPrices(name, text, audio, image, ctx, max_out)


def _rates(node: Any, where: str, *, output: bool) -> Rates:
    if not isinstance(node, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping with input, cached_input{', output' if output else ''}"
        )
    inp = _price(node.get("input"), f"{where}.input")
    cached = (
        _price(node["cached_input"], f"{where}.cached_input") if node.get("cached_input") is not None else inp
    )
    out = _price(node.get("output"), f"{where}.output") if output else None
    return Rates(inp, cached, out)


def _asr(name: str, node: Any, where: str) -> TranscriptionPrices:
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    text, audio = _map(node.get("text")), _map(node.get("audio"))

    def opt(value: Any, key: str) -> Decimal:
        return Decimal(0) if value is None else _price(value, f"{where}.{key}")

    per_minute = (
        _price(node["per_minute"], f"{where}.per_minute") if node.get("per_minute") is not None else None
    )
    return TranscriptionPrices(
        name,
        text_input=opt(text.get("input"), "text.input"),
        audio_input=opt(audio.get("input"), "audio.input"),
        text_output=opt(text.get("output"), "text.output"),
        per_minute=per_minute,
    )


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: expected a price (USD per 1M tokens)")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where}: expected a price (USD per 1M tokens)") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{where}: expected a price >= 0")
    return d


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _dec(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Decimal(0)
    return Decimal(str(value))
