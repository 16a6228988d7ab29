"""Encryption at rest of upstream credentials (``ProviderKey.secret_encrypted``).

Secrets are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the
environment variable ``TOLLGATE_SECRET_KEY``: any string works (a long random one, please); its
SHA-256 digest is the Fernet key. Generate one with
``python -c "import secrets; print(secrets.token_urlsafe(32))"``. Losing it makes every stored
upstream key unreadable; changing it too (re-enter the keys in the admin).
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

ENV_NAME = "TOLLGATE_SECRET_KEY"


class SecretKeyMissing(ImproperlyConfigured):
    def __init__(self) -> None:
        super().__init__(
            f"{ENV_NAME} is not set, but upstream keys are stored in the database (ProviderKey): "
            f"set {ENV_NAME} to the value they were saved with."
        )


class SecretKeyWrong(ImproperlyConfigured):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"{ENV_NAME} does not decrypt {what}: it was saved under another {ENV_NAME}. "
            "Set the original value, or enter the upstream key again in the admin."
        )


def _fernet() -> Fernet:
    from cryptography.fernet import Fernet  # imported when needed: most processes never do

    secret = settings.TOLLGATE_SECRET_KEY
    if not secret:
        raise SecretKeyMissing()
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def is_configured() -> bool:
    return bool(settings.TOLLGATE_SECRET_KEY)


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode("ascii")


def decrypt(token: str, what: str = "a stored upstream key") -> str:
    """The plaintext of ``token``; ``SecretKeyWrong`` (naming ``what``) if the key is not the
    one it was encrypted with."""
    from cryptography.fernet import InvalidToken

    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError):
        raise SecretKeyWrong(what) from None
