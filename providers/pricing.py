"""What a call costs, every modality in its own unit, from config.toml's prices.

- tokens (chat, embeddings): ``input_per_mtok``, ``output_per_mtok`` and the cache prices, USD
  per million tokens;
- images: ``image_prices["<size>/<quality>"]`` per image, else ``per_image``;
- speech: ``per_mchar``, USD per million input characters;
- transcription: ``per_minute``, USD per minute of audio.

An image or transcription call whose upstream reports tokens that the model has a price for is
billed by those tokens only, never by tokens *and* per image or minute: OpenAI bills gpt-image
and gpt-4o-transcribe by tokens, and their per-image and per-minute figures are estimates of
the same tokens. The ``Units`` of a call also come from here when the upstream does not say
(``estimate_audio_seconds``).
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from providers.types import Units, Usage

if TYPE_CHECKING:
    from providers.config import ModelConfig

_MILLION = Decimal(1_000_000)
_SECONDS_PER_MINUTE = Decimal(60)
_MILLISECOND = Decimal("0.001")


def cost_of(usage: Usage, prices: ModelConfig | None, units: Units | None = None) -> Decimal:
    """USD cost of one call: its tokens, else its units (images, characters, seconds)."""
    if prices is None:
        return Decimal(0)
    tokens = token_cost(usage, prices)
    if units is None or tokens > 0:
        return tokens
    return unit_cost(units, prices)


def token_cost(usage: Usage, prices: ModelConfig) -> Decimal:
    """Cached input is priced at its own rate when config gives one, else as input."""
    prompt = usage.prompt_tokens or 0
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    uncached = max(prompt - cache_read - cache_write, 0)
    read_price = prices.cache_read_per_mtok
    write_price = prices.cache_write_per_mtok
    micro_usd = (
        uncached * prices.input_per_mtok
        + cache_read * (read_price if read_price is not None else prices.input_per_mtok)
        + cache_write * (write_price if write_price is not None else prices.input_per_mtok)
        + (usage.completion_tokens or 0) * prices.output_per_mtok
    )
    return micro_usd / _MILLION


def unit_cost(units: Units, prices: ModelConfig) -> Decimal:
    cost = Decimal(0)
    if units.images:
        cost += units.images * image_price(prices, units.image_size, units.image_quality)
    if units.characters:
        cost += units.characters * prices.per_mchar / _MILLION
    if units.audio_seconds:
        cost += units.audio_seconds * prices.per_minute / _SECONDS_PER_MINUTE
    return cost


def image_price(prices: ModelConfig, size: str | None, quality: str | None) -> Decimal:
    """The price of one image of ``size`` and ``quality``, else ``per_image``."""
    if size and quality:
        price = prices.image_prices.get(f"{size}/{quality}")
        if price is not None:
            return price
    return prices.per_image


# --- units the upstream did not report -----------------------------------------------------------

ASSUMED_AUDIO_BYTES_PER_SECOND = 16_000
"""Compressed audio (mp3, m4a, ogg, webm...) is taken to be 128 kbit/s."""


def estimate_audio_seconds(data: bytes) -> Decimal:
    """Seconds of audio in an upload, for a transcription whose upstream did not say: exact for
    PCM WAV (from its header), otherwise the file's size at 128 kbit/s."""
    seconds = _wav_seconds(data)
    if seconds is None:
        seconds = len(data) / ASSUMED_AUDIO_BYTES_PER_SECOND
    return Decimal(seconds).quantize(_MILLISECOND)


def _wav_seconds(data: bytes) -> float | None:
    """The duration of a RIFF/WAVE file: its ``data`` chunk's size over the ``fmt `` byte rate."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position, byte_rate = 12, 0
    while position + 8 <= len(data):
        chunk_id = data[position : position + 4]
        (size,) = struct.unpack_from("<I", data, position + 4)
        body = position + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            (byte_rate,) = struct.unpack_from("<I", data, body + 8)
        elif chunk_id == b"data" and byte_rate:
            # A streamed WAV may declare 0 or 0xFFFFFFFF: count the bytes that are there.
            available = len(data) - body
            return (min(size, available) if size else available) / byte_rate
        position = body + size + (size & 1)
    return None


def estimate_embedding_tokens(value: Any) -> int:
    """Input tokens of an embeddings request, for a call abandoned before the upstream said:
    token ids count one each, text 4 characters a token."""
    if isinstance(value, str):
        return math.ceil(len(value) / 4)
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(estimate_embedding_tokens(item) for item in value)
    return 0
