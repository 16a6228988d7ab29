"""The ledger's names for the API's endpoints: what calls record, the admin filters on and the
reports show. A new endpoint adds its name here."""

from __future__ import annotations

from enum import StrEnum


class Endpoint(StrEnum):
    CHAT_COMPLETIONS = "chat.completions"
    MESSAGES = "messages"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    IMAGES = "images.generations"
    SPEECH = "audio.speech"
    TRANSCRIPTIONS = "audio.transcriptions"
