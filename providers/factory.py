"""Builds and caches one provider instance per configured provider, and routes model names.

A model name is either an alias from config.toml's ``[models]`` or ``<provider>/<upstream model>``.
Nothing else creates providers: each instance owns one pooled ``httpx.AsyncClient`` that lives as
long as the factory and is closed by ``aclose``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import httpx
from httpx_aiohttp import AiohttpTransport

from providers.anthropic import AnthropicProvider
from providers.base import BaseProvider
from providers.config import GatewayConfig, ModelConfig, ProviderConfig
from providers.errors import ModelNotFound, UnsupportedOperation
from providers.openai import OpenAIProvider
from providers.types import OPERATIONS, CredentialSource, Operation

ProviderClass = Callable[[str, ProviderConfig, httpx.AsyncClient], BaseProvider]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call goes: the provider, the upstream's model name, and its prices."""

    requested_model: str
    provider: BaseProvider
    upstream_model: str
    prices: ModelConfig | None

    @property
    def provider_name(self) -> str:
        return self.provider.name

    @property
    def operations(self) -> tuple[Operation, ...]:
        """What the model declares in config.toml; a model that config.toml does not list (a
        ``passthrough_models`` provider's) may be tried for anything its provider implements."""
        return self.prices.operations if self.prices is not None else OPERATIONS


def unsupported(model: str, operation: Operation) -> UnsupportedOperation:
    return UnsupportedOperation(f"The model `{model}` does not support {operation}.", param="model")


def default_transport(config: ProviderConfig) -> httpx.AsyncBaseTransport:
    """httpx over aiohttp: several times the throughput of httpx's own transport under load.

    Idle connections are dropped before the upstream would drop them (``keepalive_seconds``),
    so that a burst after a pause does not hit a connection the upstream already closed.
    """
    return AiohttpTransport(
        limits=httpx.Limits(
            max_connections=config.max_connections,
            keepalive_expiry=config.keepalive_seconds,
        )
    )


class ProviderFactory:
    _registry: ClassVar[dict[str, ProviderClass]] = {  # a new provider type is added here
        "openai": OpenAIProvider,
        "anthropic": AnthropicProvider,
    }

    def __init__(
        self,
        config: GatewayConfig,
        transport: Callable[[ProviderConfig], httpx.AsyncBaseTransport] = default_transport,
        credentials: CredentialSource | None = None,
    ) -> None:
        """``credentials`` picks each call's upstream key (``BaseProvider.with_credential``)."""
        self.config = config
        self.credentials = credentials
        self._transport = transport
        self._instances: dict[str, BaseProvider] = {}
        self._priced_by_upstream: dict[tuple[str, str], ModelConfig] = {
            (model.provider, model.upstream_model or alias): model
            for alias, model in config.models.items()
        }

    def get(self, name: str) -> BaseProvider:
        """The one instance of provider ``name``, created on first use."""
        instance = self._instances.get(name)
        if instance is None:
            config = self.config.providers[name]
            provider_class = self._registry.get(config.type)
            if provider_class is None:
                raise UnsupportedOperation(
                    f"Provider '{name}' has type '{config.type}', which this build cannot call."
                )
            client = httpx.AsyncClient(
                transport=self._transport(config),
                timeout=httpx.Timeout(
                    config.timeout_seconds, connect=config.connect_timeout_seconds
                ),
            )
            instance = provider_class(name, config, client)
            instance.credentials = self.credentials
            self._instances[name] = instance
        return instance

    def resolve(self, model: str, operation: Operation | None = None) -> Route:
        """Route a model name, or raise ``ModelNotFound`` (404); with ``operation``, raise
        ``UnsupportedOperation`` (400) when the model does not declare it."""
        route = self._route(model)
        if operation is not None and operation not in route.operations:
            raise unsupported(model, operation)
        return route

    def _route(self, model: str) -> Route:
        alias = self.config.models.get(model)
        if alias is not None:
            return Route(model, self.get(alias.provider), alias.upstream_model or model, alias)
        provider_name, slash, upstream_model = model.partition("/")
        provider = self.config.providers.get(provider_name) if slash else None
        if provider is not None and upstream_model:
            prices = self._priced_by_upstream.get((provider_name, upstream_model))
            if prices is not None or provider.passthrough_models:
                return Route(model, self.get(provider_name), upstream_model, prices)
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )

    async def aclose(self) -> None:
        instances, self._instances = self._instances, {}
        for instance in instances.values():
            await instance.aclose()
