"""Builds and caches one provider instance per configured provider, and routes model names.

A model name is either an alias from config.toml's ``[models]`` or ``<provider>/<upstream model>``.
Nothing else creates providers: each instance owns one pooled ``UpstreamClient`` that lives as
long as the factory and is closed by ``aclose``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import httpx

from providers.anthropic import AnthropicProvider
from providers.base import BaseProvider
from providers.config import DeploymentConfig, GatewayConfig, ModelConfig, ProviderConfig
from providers.errors import ModelNotFound, UnsupportedOperation
from providers.http import UpstreamClient, UpstreamTransport
from providers.openai import OpenAIProvider
from providers.types import OPERATIONS, CredentialSource, Operation

ProviderClass = Callable[[str, ProviderConfig, UpstreamClient], BaseProvider]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call goes: the provider, the upstream's model name, and its prices; for an
    alias with several deployments, one of them, with its share of the calls and its timeouts."""

    requested_model: str
    provider: BaseProvider
    upstream_model: str
    prices: ModelConfig | None
    weight: float = 1.0
    priority: int = 0
    first_byte_timeout: float | None = None
    total_timeout: float | None = None

    @property
    def provider_name(self) -> str:
        return self.provider.name

    @property
    def deployment(self) -> str:
        """``provider/upstream_model``: how the deployment is named in headers, logs and health."""
        return f"{self.provider.name}/{self.upstream_model}"

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
    return UpstreamTransport(
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
        self._routes: dict[str, tuple[Route, ...]] = {}
        self._priced_by_upstream: dict[tuple[str, str], ModelConfig] = {
            (deployment.provider, deployment.upstream_model or alias): model
            for alias, model in config.models.items()
            for deployment in model.deployment_list()
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
            client = UpstreamClient(
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
        """Route a model name to its first deployment (``routes`` gives them all), or raise
        ``ModelNotFound`` (404); with ``operation``, raise ``UnsupportedOperation`` (400) when
        the model does not declare it."""
        return self.routes(model, operation)[0]

    def routes(self, model: str, operation: Operation | None = None) -> tuple[Route, ...]:
        """Every deployment of a model name, in config.toml's order."""
        routes = self._routes.get(model)
        if routes is None:
            routes = self._build_routes(model)
            if model in self.config.models:  # passthrough names are not kept: unbounded
                self._routes[model] = routes
        if operation is not None and operation not in routes[0].operations:
            raise unsupported(model, operation)
        return routes

    def _build_routes(self, model: str) -> tuple[Route, ...]:
        alias = self.config.models.get(model)
        if alias is not None:
            return tuple(self._deployment(model, alias, d) for d in alias.deployment_list())
        provider_name, slash, upstream_model = model.partition("/")
        provider = self.config.providers.get(provider_name) if slash else None
        if provider is not None and upstream_model:
            prices = self._priced_by_upstream.get((provider_name, upstream_model))
            if prices is not None or provider.passthrough_models:
                return (
                    Route(
                        model,
                        self.get(provider_name),
                        upstream_model,
                        prices,
                        first_byte_timeout=provider.first_byte_timeout_seconds,
                        total_timeout=provider.total_timeout_seconds,
                    ),
                )
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )

    def _deployment(self, alias: str, model: ModelConfig, deployment: DeploymentConfig) -> Route:
        provider = self.config.providers[deployment.provider]
        overrides = deployment.price_overrides()
        return Route(
            alias,
            self.get(deployment.provider),
            deployment.upstream_model or alias,
            model.model_copy(update=overrides) if overrides else model,
            weight=deployment.weight,
            priority=deployment.priority,
            first_byte_timeout=model.first_byte_timeout_seconds
            or provider.first_byte_timeout_seconds,
            total_timeout=model.total_timeout_seconds or provider.total_timeout_seconds,
        )

    async def aclose(self) -> None:
        instances, self._instances = self._instances, {}
        for instance in instances.values():
            await instance.aclose()
