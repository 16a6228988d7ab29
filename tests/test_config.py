"""config.toml: strict validation, routing, prices."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from providers.base import Usage
from providers.config import ConfigError, GatewayConfig, ModelConfig, cost_of, load_config
from providers.errors import ModelNotFound
from providers.factory import ProviderFactory

ROOT = Path(__file__).resolve().parent.parent

BASE = """
[providers.openai]
type = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[providers.local]
type = "openai"
base_url = "http://127.0.0.1:11434/v1"
passthrough_models = true

[models."gpt-4o-mini"]
provider = "openai"
upstream_model = "gpt-4o-mini-2024-07-18"
input_per_mtok = 0.15
output_per_mtok = 0.60

[models."gpt-4o"]
provider = "openai"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "config.toml")
    assert {"openai", "anthropic", "deepseek", "ollama"} <= set(config.providers)
    assert config.models["gpt-4o-mini"].input_per_mtok == Decimal("0.15")


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '\n[models."x"]\nprovider = "openai"\ninput_per_mtoks = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "models.x.input_per_mtoks: unknown key" in str(info.value)


def test_unknown_provider_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('api_key_env = "OPENAI_API_KEY"', 'api_key = "sk-1"'))
    with pytest.raises(ConfigError, match=r"providers\.openai\.api_key: unknown key"):
        load_config(path)


def test_model_naming_a_missing_provider_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '\n[models."y"]\nprovider = "nowhere"\n')
    with pytest.raises(ConfigError, match='unknown provider "nowhere"'):
        load_config(path)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[providers\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_config_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLGATE_CONFIG", str(write(tmp_path, BASE)))
    assert "gpt-4o" in load_config().models


@pytest.mark.parametrize(
    ("model", "provider", "upstream", "priced"),
    [
        ("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", True),  # alias, renamed upstream
        ("gpt-4o", "openai", "gpt-4o", True),  # alias, upstream defaults to the alias
        ("openai/gpt-4o-mini-2024-07-18", "openai", "gpt-4o-mini-2024-07-18", True),
        ("local/llama3.2", "local", "llama3.2", False),  # passthrough provider, unpriced
        ("local/org/model:7b", "local", "org/model:7b", False),  # slashes in the model name
    ],
)
def test_resolve(tmp_path: Path, model: str, provider: str, upstream: str, priced: bool) -> None:
    factory = ProviderFactory(load_config(write(tmp_path, BASE)))
    route = factory.resolve(model)
    assert (route.provider_name, route.upstream_model) == (provider, upstream)
    assert (route.prices is not None) is priced
    assert factory.resolve(model).provider is route.provider  # one cached instance


@pytest.mark.parametrize("model", ["gpt-5", "openai/gpt-5", "nowhere/x", "openai/", "/x"])
def test_unknown_models_are_404(tmp_path: Path, model: str) -> None:
    factory = ProviderFactory(load_config(write(tmp_path, BASE)))
    with pytest.raises(ModelNotFound) as info:
        factory.resolve(model)
    assert info.value.status == 404 and info.value.param == "model"


def test_cost_prices_cached_input_at_its_own_rate() -> None:
    prices = ModelConfig(
        provider="p",
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(8),
        cache_read_per_mtok=Decimal("0.5"),
        cache_write_per_mtok=Decimal(3),
    )
    usage = Usage(
        prompt_tokens=1000, completion_tokens=100, cache_read_tokens=600, cache_write_tokens=200
    )
    # 200 uncached * 2 + 600 * 0.5 + 200 * 3 + 100 * 8 = 2100 micro-USD
    assert cost_of(usage, prices) == Decimal("0.0021")


def test_cost_without_cache_prices_uses_the_input_price() -> None:
    prices = ModelConfig(provider="p", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2))
    usage = Usage(prompt_tokens=10, completion_tokens=5, cache_read_tokens=4)
    assert cost_of(usage, prices) == Decimal("0.00002")
    assert cost_of(usage, None) == 0
    assert cost_of(Usage(), prices) == 0


def test_empty_config_is_valid() -> None:
    assert GatewayConfig().models == {}
