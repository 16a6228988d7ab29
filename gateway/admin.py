"""Admin pages: tenants, their keys (raw key shown once, at creation), and the read-only ledger."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from gateway import auth
from gateway.models import ApiKey, Tenant, UsageRecord

admin.site.site_header = "Tollgate"
admin.site.site_title = "Tollgate admin"


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("prefix", "name", "created_at", "expires_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "revoked_at")
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are issued from the API key page, which shows the raw key once


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    inlines = [ApiKeyInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "tenant", "name", "created_at", "expires_at", "revoked_at")
    list_filter = ("tenant",)
    search_fields = ("prefix", "name", "tenant__name")
    list_select_related = ("tenant",)
    readonly_fields = ("prefix", "created_at", "revoked_at")
    actions = ["revoke_keys"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ["tenant", "name", "expires_at"]
        return ["tenant", "name", "prefix", "created_at", "expires_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ()
        return ("tenant", "prefix", "created_at", "revoked_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            raw = obj.assign_new_secret()
            super().save_model(request, obj, form, change)
            messages.warning(
                request,
                f"New API key for {obj.tenant.name}: {raw} — copy it now, it will not be shown "
                "again.",
            )
            return
        super().save_model(request, obj, form, change)
        auth.forget(obj.prefix)

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        prefixes = list(queryset.filter(revoked_at=None).values_list("prefix", flat=True))
        queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        for prefix in prefixes:
            auth.forget(prefix)
        self.message_user(request, f"Revoked {len(prefixes)} key(s).")


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The ledger, read-only. Counting a multi-million-row table on every page is avoided."""

    list_display = (
        "created_at",
        "tenant",
        "api_key",
        "endpoint",
        "requested_model",
        "provider",
        "stream",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "status_code",
        "error_type",
        "latency_ms",
    )
    list_filter = ("endpoint", "status_code", "stream", "provider")
    search_fields = ("request_id",)
    list_select_related = ("tenant", "api_key")
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
