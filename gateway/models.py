"""Tenants, their API keys, and the usage ledger."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from django.db import models
from django.utils import timezone

from gateway.usage.endpoints import Endpoint

KEY_PREFIX = "tg-"
PREFIX_LENGTH = 12
"""Characters of a raw key kept in clear: the lookup prefix, also how the admin names a key."""


def hash_key(raw_key: str) -> str:
    """SHA-256 of a raw key. Keys carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


ERROR_MESSAGE_LENGTH = 500
"""Characters of a failed call's error message that its ledger row keeps."""

BUDGET_PERIODS = [("daily", "daily"), ("monthly", "monthly"), ("total", "total")]


def key_matches(key_hash: str, raw_key: str) -> bool:
    """Whether ``raw_key`` is the key of ``key_hash``, in constant time."""
    return hmac.compare_digest(key_hash, hash_key(raw_key))


def has_expired(expires_at: datetime | None) -> bool:
    return expires_at is not None and expires_at <= timezone.now()


class Limits(models.Model):
    """What a tenant, or one of its keys, may use and spend. Empty or null means no limit."""

    allowed_models = models.CharField(
        max_length=2000,
        blank=True,
        help_text="Model names (aliases or provider/model), separated by commas. Empty: all.",
    )
    rpm_limit = models.PositiveIntegerField(
        "requests per minute", null=True, blank=True, help_text="Empty: no limit."
    )
    tpm_limit = models.PositiveIntegerField(
        "tokens per minute", null=True, blank=True, help_text="Empty: no limit."
    )
    budget_usd = models.DecimalField(
        "budget (USD)",
        max_digits=14,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Spending cap over the budget period. Empty: no cap.",
    )
    budget_period = models.CharField(max_length=10, choices=BUDGET_PERIODS, default="monthly")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def model_allow_list(self) -> list[str]:
        return [name.strip() for name in self.allowed_models.split(",") if name.strip()]


class Tenant(Limits):
    name = models.CharField(max_length=100, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKeyManager(models.Manager["ApiKey"]):
    def issue(self, tenant: Tenant, name: str = "", **fields: object) -> tuple[ApiKey, str]:
        """Create a key and return it with its raw value, which is never stored."""
        key = ApiKey(tenant=tenant, name=name, **fields)
        raw = key.assign_new_secret()
        key.save()
        return key, raw


class ApiKey(Limits):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyManager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant.name}{', ' + self.name if self.name else ''})"

    def assign_new_secret(self) -> str:
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix = raw[:PREFIX_LENGTH]
        self.key_hash = hash_key(raw)
        return raw

    def matches(self, raw_key: str) -> bool:
        return key_matches(self.key_hash, raw_key)

    def is_enabled(self) -> bool:
        """Neither revoked nor of a deactivated tenant (expiry aside: it depends on the time)."""
        return self.revoked_at is None and self.tenant.is_active

    def is_usable(self) -> bool:
        return self.is_enabled() and not has_expired(self.expires_at)

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


class UsageRecord(models.Model):
    """The ledger: one row per call, successful or not. Append-only."""

    # When a call under limits was admitted (so a row falls in the budget period it counted in,
    # which that period's counter is loaded from); else when the call was recorded (Call.record).
    created_at = models.DateTimeField(default=timezone.now)
    request_id = models.CharField(
        max_length=64,
        unique=True,
        help_text="The gateway's id of the call: a row is written once, however often replayed.",
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage")
    endpoint = models.CharField(max_length=40, default=Endpoint.CHAT_COMPLETIONS.value)
    requested_model = models.CharField(max_length=200)
    served_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="The model alias that served the call: the requested one, or a fallback.",
    )
    provider = models.CharField(max_length=100, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(null=True)
    completion_tokens = models.PositiveIntegerField(null=True)
    total_tokens = models.PositiveIntegerField(null=True)
    cache_read_tokens = models.PositiveIntegerField(null=True)
    cache_write_tokens = models.PositiveIntegerField(null=True)
    reasoning_tokens = models.PositiveIntegerField(null=True)
    image_count = models.PositiveIntegerField(null=True, help_text="Images generated.")
    input_characters = models.PositiveIntegerField(
        null=True, help_text="Characters of text turned into speech."
    )
    audio_seconds = models.DecimalField(
        max_digits=12, decimal_places=3, null=True, help_text="Seconds of audio transcribed."
    )
    usage_estimated = models.BooleanField(
        default=False,
        help_text="Tokens (or audio seconds) counted by the gateway: the upstream never "
        "reported them.",
    )
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(
        max_length=ERROR_MESSAGE_LENGTH,
        blank=True,
        help_text="What the failed call was told (cut to its first 500 characters, upstream "
        "keys and anything shaped like a credential redacted).",
    )
    latency_ms = models.PositiveIntegerField()
    attempts = models.PositiveSmallIntegerField(
        default=1,
        help_text="Upstream attempts, retries and fallbacks included (failed ones unbilled).",
    )
    fallback = models.BooleanField(default=False, help_text="Served by a fallback model.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="usage_tenant_time"),
            models.Index(fields=["api_key", "created_at"], name="usage_key_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.requested_model} {self.status_code}"


class LedgerDeadLetter(models.Model):
    """A ledger row the database refused on its own (its batch was split until only it failed),
    kept with the reason so that an operator can see it, fix what it needs and retry it."""

    created_at = models.DateTimeField(default=timezone.now)
    request_id = models.CharField(max_length=64, blank=True)
    tenant_id = models.BigIntegerField(null=True, help_text="As the row has it (not checked).")
    reason = models.TextField()
    row = models.TextField(help_text="The row as JSON, every value as it was queued.")

    class Meta:
        verbose_name = "ledger dead letter"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.request_id or '(no request id)'}: {self.reason[:80]}"


class ProviderKey(models.Model):
    """An upstream credential, encrypted at rest (``gateway.upstream_keys.secrets``)."""

    provider = models.CharField(max_length=100, help_text="A provider name from config.toml.")
    label = models.CharField(max_length=100)
    secret_encrypted = models.TextField(editable=False)
    last4 = models.CharField("ends with", max_length=4, editable=False)
    is_active = models.BooleanField(default=True)
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of calls among the provider's active keys."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    test_passed_at = models.DateTimeField(
        null=True, editable=False, help_text="When the admin's test (list models) last passed."
    )
    test_failed_at = models.DateTimeField(
        null=True, editable=False, help_text="When the admin's test (list models) last failed."
    )
    test_error = models.CharField(
        max_length=500, blank=True, editable=False, help_text="What the last failed test got."
    )

    class Meta:
        ordering = ["provider", "label"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "label"], name="provider_key_label")
        ]

    def __str__(self) -> str:
        return f"{self.provider}: {self.label} (…{self.last4})"


class UsageDaily(models.Model):
    """Rollup of the ledger: one row per day x tenant x key x model x provider, kept current by
    the ledger writer in the same transaction as the rows it summarises."""

    day = models.DateField()
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_daily")
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="usage_daily")
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=100, blank=True)
    calls = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    image_count = models.PositiveBigIntegerField(default=0)
    input_characters = models.PositiveBigIntegerField(default=0)
    audio_seconds = models.DecimalField(max_digits=16, decimal_places=3, default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)

    class Meta:
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        permissions = [("view_usage_report", "Can view usage reports and export them as CSV")]
        constraints = [
            models.UniqueConstraint(
                fields=["day", "tenant", "api_key", "model", "provider"], name="usage_daily_key"
            )
        ]
        indexes = [
            models.Index(fields=["day"], name="usage_daily_day"),
            models.Index(fields=["tenant", "day"], name="usage_daily_tenant_day"),
            models.Index(fields=["api_key", "day"], name="usage_daily_key_day"),
        ]


class StoredResponse(models.Model):
    """A response of the Responses API kept for its tenant (``store``, the API's default), so
    that ``previous_response_id``, ``GET`` and ``DELETE /v1/responses/{id}`` work whatever the
    model. A bridged response keeps its body and the conversation up to it; a response of an
    upstream that serves the API itself (``native``) keeps only where it lives. Purged after
    TOLLGATE_RESPONSES_RETENTION_DAYS."""

    id = models.CharField(max_length=100, primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="responses")
    created_at = models.DateTimeField(default=timezone.now)
    model = models.CharField(max_length=200)
    provider = models.CharField(max_length=100, blank=True)
    native = models.BooleanField(default=False)
    body = models.JSONField(default=dict, help_text="The Response object (bridged only).")
    input_items = models.JSONField(
        default=list, help_text="This response's input items, as the client sent them."
    )
    conversation = models.JSONField(
        default=list,
        help_text="Every item up to and including this response's output: what a later "
        "previous_response_id continues from.",
    )

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="stored_response_time")]
