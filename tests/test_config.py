"""config.toml: strict validation, routing, prices."""

from __future__ import annotations

import struct
from decimal import Decimal
from pathlib import Path

import pytest

from providers.config import ConfigError, GatewayConfig, ModelConfig, load_config
from providers.errors import ModelNotFound, UnsupportedOperation
from providers.factory import ProviderFactory
from providers.pricing import cost_of, estimate_audio_seconds
from providers.types import Units, Usage

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


# --- operations and the prices of each modality ---------------------------------------------------


def test_the_shipped_config_prices_every_modality() -> None:
    models = load_config(ROOT / "config.toml").models
    assert models["gpt-4o-mini"].operations == ("chat",)
    assert models["text-embedding-3-small"].operations == ("embeddings",)
    assert models["text-embedding-3-small"].input_per_mtok == Decimal("0.02")
    assert models["dall-e-3"].image_prices["1024x1024/hd"] == Decimal("0.08")
    assert models["tts-1"].per_mchar == Decimal(15)
    assert models["whisper-1"].per_minute == Decimal("0.006")


def test_operations_default_to_chat_and_unknown_ones_are_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.models["gpt-4o"].operations == ("chat",)
    path = write(tmp_path, BASE + '\n[models."x"]\nprovider = "openai"\noperations = ["video"]\n')
    with pytest.raises(ConfigError, match=r"models\.x\.operations\.0: Input should be 'chat'"):
        load_config(path)
    path = write(tmp_path, BASE + '\n[models."x"]\nprovider = "openai"\noperations = []\n')
    with pytest.raises(ConfigError, match=r"models\.x\.operations: "):
        load_config(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("per_image = 0.04", 'per_image set, but operations does not include "images"'),
        ("per_mchar = 15", 'per_mchar set, but operations does not include "speech"'),
        ("per_minute = 0.006", 'per_minute set, but operations does not include "transcription"'),
        ('operations = ["images"]\nimage_prices = { "1024x1024" = 0.04 }', '"<size>/<quality>"'),
        ('operations = ["speech"]\nper_mchar = -1', "models.x.per_mchar: Input should be greater"),
    ],
)
def test_a_price_that_cannot_apply_is_a_config_error(
    tmp_path: Path, lines: str, message: str
) -> None:
    path = write(tmp_path, BASE + f'\n[models."x"]\nprovider = "openai"\n{lines}\n')
    with pytest.raises(ConfigError, match=r"models\.x") as info:
        load_config(path)
    assert message in str(info.value)


def test_resolve_holds_a_model_to_its_operations(tmp_path: Path) -> None:
    text = BASE + '\n[models."embed"]\nprovider = "openai"\noperations = ["embeddings"]\n'
    factory = ProviderFactory(load_config(write(tmp_path, text)))
    assert factory.resolve("embed", "embeddings").upstream_model == "embed"
    with pytest.raises(UnsupportedOperation) as info:
        factory.resolve("embed", "chat")
    assert (info.value.status, info.value.param) == (400, "model")
    assert str(info.value) == "The model `embed` does not support chat."
    assert factory.resolve("local/nomic-embed", "embeddings").prices is None  # passthrough


def media_prices(**prices: object) -> ModelConfig:
    operations = ("chat", "embeddings", "images", "speech", "transcription")
    return ModelConfig.model_validate({"provider": "p", "operations": operations, **prices})


@pytest.mark.parametrize(
    ("size", "quality", "price"),
    [
        ("1024x1024", "hd", "0.08"),
        ("1024x1024", "standard", "0.04"),  # not listed: per_image
        ("1024x1024", None, "0.04"),
        (None, None, "0.04"),
    ],
)
def test_images_are_priced_by_size_and_quality_else_per_image(
    size: str | None, quality: str | None, price: str
) -> None:
    prices = media_prices(per_image="0.04", image_prices={"1024x1024/hd": "0.08"})
    units = Units(images=3, image_size=size, image_quality=quality)
    assert cost_of(Usage(), prices, units) == 3 * Decimal(price)


def test_reported_tokens_with_a_token_price_replace_the_unit_price() -> None:
    tokens = Usage(prompt_tokens=50, completion_tokens=1000)
    image = Units(images=1)
    assert cost_of(tokens, media_prices(per_image="0.04"), image) == Decimal("0.04")
    priced = media_prices(per_image="0.04", input_per_mtok=5, output_per_mtok=40)
    assert cost_of(tokens, priced, image) == Decimal("0.04025")  # (50 * 5 + 1000 * 40) / 1e6
    assert cost_of(Usage(), priced, image) == Decimal("0.04"), "no tokens reported: per image"


def test_speech_and_transcription_units() -> None:
    prices = media_prices(per_mchar=15, per_minute="0.006")
    assert cost_of(Usage(), prices, Units(characters=1000)) == Decimal("0.015")
    assert cost_of(Usage(), prices, Units(audio_seconds=Decimal("90"))) == Decimal("0.009")
    assert cost_of(Usage(), None, Units(characters=1000)) == 0


def test_audio_seconds_are_exact_for_wav_and_estimated_from_size_otherwise() -> None:
    rate, seconds = 16_000, 3.25
    data = b"\0\0" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", 16) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\0"
    chunks += b"data" + struct.pack("<I", len(data)) + data
    wav = b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks
    assert estimate_audio_seconds(wav) == Decimal("3.250")
    streamed = wav.replace(struct.pack("<I", len(data)), b"\xff\xff\xff\xff")
    assert estimate_audio_seconds(streamed) == Decimal("3.250")
    assert estimate_audio_seconds(b"ID3" + b"\0" * 47_997) == Decimal("3.000")  # 128 kbit/s
    assert estimate_audio_seconds(b"RIFF") == Decimal("0.000")
