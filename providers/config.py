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
    """Idle timeout: the longest wait for the upstream's next byte (between stream chunks too)."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    first_byte_timeout_seconds: float | None = Field(default=None, gt=0)
    """Longest wait for the start of an answer: a stream's first chunk, a JSON answer whole.
    None: ``timeout_seconds``. Past it, the attempt fails as a timeout and may be retried."""
    total_timeout_seconds: float | None = Field(default=None, gt=0)
    """Longest a call may take in all, streams included (None: no limit). A stream cut by it
    ends with an in-band error and its ledger row."""
    max_connections: int = Field(default=200, ge=1)
    keepalive_seconds: float = Field(default=4.0, gt=0)
    """How long an idle pooled connection is kept. Keep it below the upstream's own idle timeout."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent on every upstream call (e.g. an organisation id)."""
    responses: bool = False
    """The upstream serves OpenAI's Responses API itself (OpenAI does): ``/v1/responses`` calls
    go to it as they are. Otherwise they are bridged to chat completions."""
    passthrough_models: bool = False
    """Allow ``<provider>/<any model>`` for models not listed in [models] (cost 0: unpriced)."""
    anthropic_version: str = "2023-06-01"
    anthropic_betas: tuple[str, ...] = ("*",)
    """anthropic only: the ``anthropic-beta`` values a client's request may pass on to this
    upstream (``"*"``: every one, as api.anthropic.com takes them); others are left out."""
    anthropic_betas_denied: tuple[str, ...] = ()
    """anthropic only: ``anthropic-beta`` values never passed on (a Bedrock- or Vertex-style
    upstream that refuses the ones it does not know)."""
    default_max_tokens: int = Field(default=4096, ge=1)
    """Anthropic requires max_tokens; used when the client sends none."""

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


_IMAGE_PRICE_KEY = re.compile(r"[^/]+/[^/]+")


class Prices(_Strict):
    """What a model costs, each modality in its own unit (providers/pricing.py applies them)."""

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

    @field_validator("image_prices")
    @classmethod
    def _image_price_keys(cls, prices: dict[str, Decimal]) -> dict[str, Decimal]:
        for key, price in prices.items():
            if not _IMAGE_PRICE_KEY.fullmatch(key):
                raise ValueError(f'key "{key}" must be "<size>/<quality>", e.g. "1024x1024/hd"')
            if price < 0:
                raise ValueError(f'"{key}" must not be negative')
        return prices


PRICE_FIELDS = tuple(Prices.model_fields)


class DeploymentConfig(_Strict):
    """One place a model alias is served: a provider and the name it knows the model by.
    ``priority``: lower is tried first; within a priority, ``weight`` shares the calls. Prices
    are the alias's unless the deployment sets its own (any of the alias's price keys)."""

    provider: str
    upstream_model: str | None = None
    weight: float = Field(default=1.0, gt=0)
    priority: int = Field(default=0, ge=0)
    input_per_mtok: Decimal | None = None
    output_per_mtok: Decimal | None = None
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    per_image: Decimal | None = Field(default=None, ge=0)
    per_mchar: Decimal | None = Field(default=None, ge=0)
    per_minute: Decimal | None = Field(default=None, ge=0)

    def price_overrides(self) -> dict[str, Decimal]:
        return {
            name: value for name in PRICE_FIELDS if (value := getattr(self, name, None)) is not None
        }


class ModelConfig(Prices):
    """One model alias: where it is served (one ``provider``, or several ``deployments``), what
    it may be called for, where its calls go when it fails (``fallbacks``), and its prices, each
    modality in its own unit (providers/pricing.py applies them)."""

    provider: str | None = None
    upstream_model: str | None = None
    deployments: tuple[DeploymentConfig, ...] = ()
    fallbacks: tuple[str, ...] = ()
    """Other aliases, tried in order when every deployment failed with a retryable error."""
    context_window_fallbacks: tuple[str, ...] = ()
    """Other aliases, tried in order when the upstream said the prompt is too long."""
    reasoning: bool = False
    """The model takes a reasoning setting (``reasoning_effort``: o-series, gpt-5, DeepSeek's
    reasoner...): the one a translated Anthropic request asks for (thinking, effort) is sent.
    Other models never get it: they refuse the field."""
    max_output_tokens: int | None = Field(default=None, gt=0)
    """The model's output limit: a larger ``max_tokens`` on ``/v1/messages`` is capped to it."""
    first_byte_timeout_seconds: float | None = Field(default=None, gt=0)
    total_timeout_seconds: float | None = Field(default=None, gt=0)
    """The model's own timeouts, over its providers' (``ProviderConfig``; the idle timeout,
    ``timeout_seconds``, is the provider's: it is its HTTP client's)."""
    operations: tuple[Operation, ...] = ("chat",)

    @field_validator("operations")
    @classmethod
    def _some_operation(cls, operations: tuple[Operation, ...]) -> tuple[Operation, ...]:
        if not operations:
            raise ValueError("must list at least one operation")
        return operations

    @model_validator(mode="after")
    def _one_way_to_serve(self) -> ModelConfig:
        if (self.provider is None) == (not self.deployments):
            raise ValueError("set either provider (and upstream_model) or deployments, not both")
        if self.deployments and self.upstream_model is not None:
            raise ValueError("upstream_model goes in each deployment when deployments are set")
        return self

    def deployment_list(self) -> tuple[DeploymentConfig, ...]:
        """The deployments, the one-provider form included."""
        if self.deployments:
            return self.deployments
        assert self.provider is not None
        return (DeploymentConfig(provider=self.provider, upstream_model=self.upstream_model),)

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


class RouterConfig(_Strict):
    """How calls survive a bad upstream (README, "Routing"): retries, backoff, cooldowns."""

    max_retries: int = Field(default=2, ge=0, le=10)
    """Attempts after the first, per alias (a fallback alias gets as many)."""
    deadline_seconds: float = Field(default=60.0, gt=0)
    """No new attempt starts this long after the call did."""
    backoff_base_seconds: float = Field(default=0.1, ge=0)
    backoff_max_seconds: float = Field(default=5.0, ge=0)
    """A retry on a deployment that already failed this call waits a random time between 0 and
    min(backoff_max, backoff_base * 2**n) (full jitter), or the upstream's retry-after if longer."""
    retry_after_max_seconds: float = Field(default=10.0, ge=0)
    """An upstream's retry-after longer than this is not waited for: the deployment cools down."""
    cooldown_failures: int = Field(default=3, ge=1)
    cooldown_window_seconds: float = Field(default=30.0, gt=0)
    cooldown_seconds: float = Field(default=30.0, gt=0)
    """After ``cooldown_failures`` failures within the window, a deployment (or upstream key) is
    skipped for ``cooldown_seconds``, then one call probes it (half-open)."""


class GatewayConfig(_Strict):
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    router: RouterConfig = Field(default_factory=RouterConfig)

    @model_validator(mode="after")
    def _models_name_known_providers(self) -> GatewayConfig:
        known = ", ".join(sorted(self.providers)) or "none"
        for alias, model in self.models.items():
            for i, deployment in enumerate(model.deployment_list()):
                if deployment.provider not in self.providers:
                    where = f"deployments.{i}.provider" if model.deployments else "provider"
                    raise ValueError(
                        f'models."{alias}".{where}: unknown provider "{deployment.provider}" '
                        f"(configured: {known})"
                    )
            for key in ("fallbacks", "context_window_fallbacks"):
                for other in getattr(model, key):
                    if other not in self.models or other == alias:
                        raise ValueError(
                            f'models."{alias}".{key}: "{other}" is not another model alias'
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
