"""Admin pages: tenants and their keys (a raw key is shown once, at creation)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from gateway.models import ApiKey, Tenant
from gateway.tenants import auth


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("prefix", "name", "created_at", "expires_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "revoked_at")
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are issued from the API key page, which shows the raw key once


LIMIT_FIELDS = ("allowed_models", "rpm_limit", "tpm_limit", "budget_usd", "budget_period")
"""A key's own limits, within its tenant's (gateway.limits.policy)."""


class LimitsFormMixin(admin.ModelAdmin):
    """The budget period may be left out of a form (scripts, older pages): it keeps its default."""

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if "budget_period" in form.base_fields:
            form.base_fields["budget_period"].required = False
        return form


@admin.register(Tenant)
class TenantAdmin(LimitsFormMixin):
    list_display = ("name", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    inlines = [ApiKeyInline]

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        auth.forget_tenant(obj.pk)  # new limits apply at once here, elsewhere within the bound


@admin.register(ApiKey)
class ApiKeyAdmin(LimitsFormMixin):
    list_display = ("prefix", "tenant", "name", "created_at", "expires_at", "revoked_at")
    list_filter = ("tenant",)
    search_fields = ("prefix", "name", "tenant__name")
    list_select_related = ("tenant",)
    readonly_fields = ("prefix", "created_at", "revoked_at")
    actions = ["revoke_keys"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ["tenant", "name", "expires_at", *LIMIT_FIELDS]
        return [
            "tenant",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            *LIMIT_FIELDS,
        ]

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
