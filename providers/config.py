"""config.toml: providers, models and prices.

Read once per process and validated strictly: an unknown or misspelt key is an error that names the
key and the file, not a setting silently ignored. It lives beside the providers (not in the Django
app) because the provider factory is what consumes it, and providers must not import Django.
"""

from __future__ import annotations

import os
import re
import tomllib  # tomli, in the standard library since Python 3.11
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from providers.types import Operation

DEFAULT_CONFIG_PATH = "config.toml"


class ConfigError(Exception):
    """config.toml is missing, unreadable or invalid. The message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    type: Literal["openai", "anthropic"]
    base_url: str
    api_key_env: str | None = None
    """Environment variable holding the upstream key. None for keyless backends (local Ollama)."""
    timeout_seconds: float = Field(default=600.0, gt=0)
    """Longest wait for the upstream's next byte."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=200, ge=1)
    keepalive_seconds: float = Field(default=4.0, gt=0)
    """How long an idle pooled connection is kept. Keep it below the upstream's own idle timeout."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent on every upstream call (e.g. an organisation id)."""
    passthrough_models: bool = False
    """Allow ``<provider>/<any model>`` for models not listed in [models] (cost 0: unpriced)."""
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(default=4096, ge=1)
    """Anthropic requires max_tokens; used when the client sends none."""

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


_IMAGE_PRICE_KEY = re.compile(r"[^/]+/[^/]+")


class ModelConfig(_Strict):
    """One model: where it goes, what it may be called for, and its prices, each modality in
    its own unit (providers/pricing.py applies them)."""

    provider: str
    upstream_model: str | None = None
    operations: tuple[Operation, ...] = ("chat",)
    input_per_mtok: Decimal = Decimal(0)
    output_per_mtok: Decimal = Decimal(0)
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    per_image: Decimal = Field(default=Decimal(0), ge=0)
    """USD per generated image, when ``image_prices`` has no price for its size and quality."""
    image_prices: dict[str, Decimal] = Field(default_factory=dict)
    """USD per image by ``"<size>/<quality>"``, e.g. ``"1024x1024/hd"``."""
    per_mchar: Decimal = Field(default=Decimal(0), ge=0)
    """Speech: USD per million input characters."""
    per_minute: Decimal = Field(default=Decimal(0), ge=0)
    """Transcription: USD per minute of audio."""

    @field_validator("operations")
    @classmethod
    def _some_operation(cls, operations: tuple[Operation, ...]) -> tuple[Operation, ...]:
        if not operations:
            raise ValueError("must list at least one operation")
        return operations

    @field_validator("image_prices")
    @classmethod
    def _image_price_keys(cls, prices: dict[str, Decimal]) -> dict[str, Decimal]:
        for key, price in prices.items():
            if not _IMAGE_PRICE_KEY.fullmatch(key):
                raise ValueError(f'key "{key}" must be "<size>/<quality>", e.g. "1024x1024/hd"')
            if price < 0:
                raise ValueError(f'"{key}" must not be negative')
        return prices

    @model_validator(mode="after")
    def _prices_match_operations(self) -> ModelConfig:
        """A price for an operation the model does not declare is a mistake, not a no-op."""
        for operation, keys in _PRICE_KEYS.items():
            priced = [key for key in keys if getattr(self, key)]
            if priced and operation not in self.operations:
                raise ValueError(
                    f'{", ".join(priced)} set, but operations does not include "{operation}"'
                )
        return self


_PRICE_KEYS: dict[Operation, tuple[str, ...]] = {
    "images": ("per_image", "image_prices"),
    "speech": ("per_mchar",),
    "transcription": ("per_minute",),
}


class GatewayConfig(_Strict):
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _models_name_known_providers(self) -> GatewayConfig:
        for alias, model in self.models.items():
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f'models."{alias}".provider: unknown provider "{model.provider}" '
                    f"(configured: {known})"
                )
        return self


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        else:
            lines.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Read and validate config.toml (``TOLLGATE_CONFIG``, default ``./config.toml``)."""
    file = Path(path or os.environ.get("TOLLGATE_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: not found (set TOLLGATE_CONFIG to its path)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{file}: {_describe(exc)}") from exc
