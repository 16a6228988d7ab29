"""Admin pages: tenants and their keys, with what each has spent and when it last called
(``gateway.usage.spend``: annotations of the page's query, nothing written per call).

A new key's raw value is shown once, on the page that answers its creation (never stored, nor
put in a message or the session); a key is revoked from its page (a confirmation, then a
POST) or in bulk from the list.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from gateway.models import ApiKey, Tenant
from gateway.tenants import auth
from gateway.usage import reports
from gateway.usage.figures import usd
from gateway.usage.reports import ReportFilter
from gateway.usage.spend import budget_use, keys_with_figures, tenants_with_figures
from gateway.usage.views import PERMISSION as REPORT_PERMISSION
from gateway.usage.views import ledger_url, report_query

LIMIT_FIELDS = ("allowed_models", "rpm_limit", "tpm_limit", "budget_usd", "budget_period")
"""A tenant's limits, and a key's own within its tenant's (gateway.limits.policy)."""

ADMIN_CSS = {"all": ("gateway/admin.css",)}


def _when(moment: datetime | None) -> SafeString:
    """``3 hours ago``, the exact UTC time as its tooltip."""
    if moment is None:
        return format_html('<span class="quiet">{}</span>', "never")
    exact = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if timezone.now() - moment < timedelta(minutes=1):
        return format_html('<span title="{}">{}</span>', exact, "just now")
    return format_html('<span title="{}">{} ago</span>', exact, timesince(moment).split(",")[0])


def _budget(row: Any) -> str:
    if row.budget_usd is None:
        return "—"
    return f"{usd(row.budget_usd)} {row.budget_period}"


def _budget_bar(row: Any, detail: bool = False) -> SafeString:
    """The share of the budget spent as a bar and a percentage (amber from 80%, red when all
    spent); with ``detail``, the amounts too (else in the tooltip)."""
    share = budget_use(row)
    if share is None:
        return format_html('<span class="quiet">{}</span>', "no budget")
    level = "over" if share >= 1 else "high" if share >= 0.8 else "ok"
    amounts = f"{usd(row.budget_spend)} of {_budget(row)}"
    return format_html(
        '<span class="budget-use budget-{}" title="{}"><span class="bar">'
        '<span style="width: {}%"></span></span> {}%{}</span>',
        level,
        amounts,
        f"{min(share, 1) * 100:.0f}",
        f"{share * 100:.0f}",
        f" ({amounts})" if detail else "",
    )


def _day(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d}"


def _limits(obj: Any, description: str) -> tuple[str, dict[str, Any]]:
    """The limits' fieldset; on an existing tenant or key, with the budget's use so far."""
    fields = LIMIT_FIELDS if obj is None else (*LIMIT_FIELDS, "budget_use_detail")
    return ("Limits", {"fields": fields, "description": description})


class LimitsFormMixin(admin.ModelAdmin):
    """The budget period may be left out of a form (scripts, older pages): it keeps its default."""

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if "budget_period" in form.base_fields:
            form.base_fields["budget_period"].required = False
        return form


class MonthUsageMixin(admin.ModelAdmin):
    """A tenant's or key's page shows its usage this month below its fields, with links to the
    report; ``usage_of`` names the ledger's field for it (``tenant_id``, ``api_key_id``)."""

    usage_of = ""

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = dict(extra_context or {})
        if object_id.isdigit():
            first, last = reports.this_month()
            whose: dict[str, Any] = {self.usage_of: int(object_id)}
            month = dataclasses.replace(ReportFilter(first, last), **whose)
            context["month"] = month_usage(request, month)
        return super().change_view(request, object_id, form_url, context)


class FiguresColumns:
    """Columns of tenants and keys, read from ``gateway.usage.spend``'s annotations."""

    @admin.display(description="spent this month", ordering="month_spend")
    def month_spend_display(self, row: Any) -> str:
        return usd(row.month_spend)

    @admin.display(description="budget use", ordering="budget_spend")
    def budget_use_display(self, row: Any) -> SafeString:
        return _budget_bar(row)

    @admin.display(description="budget use")
    def budget_use_detail(self, row: Any) -> SafeString:
        return _budget_bar(row, detail=True)

    @admin.display(description="last call", ordering="last_call")
    def last_call_display(self, row: Any) -> SafeString:
        return _when(row.last_call)


class KeyColumns(FiguresColumns):
    @admin.display(description="state")
    def state(self, key: ApiKey) -> SafeString:
        if key.revoked_at is not None:
            return format_html('<span class="state-off">revoked {}</span>', _day(key.revoked_at))
        if key.expires_at is not None and key.expires_at <= timezone.now():
            return format_html('<span class="state-off">expired {}</span>', _day(key.expires_at))
        return format_html('<span class="state-on">{}</span>', "active")


class ApiKeyInline(KeyColumns, admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("prefix", "name", "state", "last_call_display", "month_spend_display", "expires_at")
    readonly_fields = fields  # edited on the key's own page
    show_change_link = True
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return keys_with_figures(super().get_queryset(request), timezone.now())

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are issued from the API key page, which shows the raw key once


@admin.register(Tenant)
class TenantAdmin(MonthUsageMixin, LimitsFormMixin, FiguresColumns):
    usage_of = "tenant_id"
    list_display = (
        "name",
        "is_active",
        "month_spend_display",
        "budget_display",
        "budget_use_display",
        "active_keys_display",
        "last_call_display",
    )
    list_filter = ("is_active",)
    search_fields = ("name",)
    readonly_fields = ("budget_use_detail",)
    inlines = [ApiKeyInline]

    class Media:
        css = ADMIN_CSS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return tenants_with_figures(super().get_queryset(request), timezone.now())

    def get_fieldsets(self, request: HttpRequest, obj: Tenant | None = None) -> Any:
        return (
            (None, {"fields": ("name", "is_active")}),
            _limits(obj, "Empty means no limit. Each key may have tighter limits of its own."),
        )

    @admin.display(description="budget", ordering="budget_usd")
    def budget_display(self, tenant: Tenant) -> str:
        return _budget(tenant)

    @admin.display(description="active keys", ordering="active_keys")
    def active_keys_display(self, tenant: Any) -> int:
        return int(tenant.active_keys)

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        auth.forget_tenant(obj.pk)  # new limits apply at once here, elsewhere within the bound


def month_usage(request: HttpRequest, month: ReportFilter) -> dict[str, Any]:
    """This month's usage of a tenant or key: totals, by model, and links to the report (for
    who may see it) and to the ledger rows."""
    return {
        "report": month,
        "totals": reports.totals(month),
        "models": reports.by_model(month)[:10],
        "report_url": reverse("usage-report") + report_query(month)
        if request.user.has_perm(REPORT_PERMISSION)
        else "",
        "ledger_url": ledger_url(month),
    }


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked"), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.exclude(revoked_at=None)
        if self.value() == "expired":
            return queryset.filter(revoked_at=None, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at=None).exclude(expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(MonthUsageMixin, LimitsFormMixin, KeyColumns):
    usage_of = "api_key_id"
    list_display = (
        "prefix",
        "tenant",
        "name",
        "state",
        "last_call_display",
        "month_spend_display",
        "budget_use_display",
        "created",
    )
    list_filter = (KeyStateFilter, "tenant")
    search_fields = ("prefix", "name", "tenant__name")
    list_select_related = ("tenant",)
    actions = ["revoke_keys"]

    class Media:
        css = ADMIN_CSS

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return keys_with_figures(super().get_queryset(request), timezone.now())

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        limits = _limits(obj, "Within its tenant's limits. Empty means no limit of its own.")
        if obj is None:
            return ((None, {"fields": ("tenant", "name", "expires_at")}), limits)
        return (
            (None, {"fields": ("tenant", "name", "prefix", "state", "last_call_display")}),
            limits,
            ("Dates", {"fields": ("created_at", "expires_at", "revoked_at")}),
        )

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ()
        return (
            "tenant",
            "prefix",
            "state",
            "last_call_display",
            "budget_use_detail",
            "created_at",
            "revoked_at",
        )

    @admin.display(description="created", ordering="created_at")
    def created(self, key: ApiKey) -> str:
        return _day(key.created_at)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            request.issued_key = obj.assign_new_secret()  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)
        if change:
            auth.forget(obj.prefix)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The new key, once: on this answer only (no redirect, nothing kept to show it
        again), in a box with a copy button."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New API key",
            "key": obj,
            "raw_key": request.issued_key,  # type: ignore[attr-defined]
            "change_url": reverse("admin:gateway_apikey_change", args=[obj.pk]),
            "add_url": reverse("admin:gateway_apikey_add") + f"?tenant={obj.tenant_id}",
        }
        return TemplateResponse(request, "admin/gateway/apikey/issued.html", context)

    def get_urls(self) -> list[URLPattern]:
        revoke = path(
            "<path:object_id>/revoke/",
            self.admin_site.admin_view(self.revoke_view),
            name="gateway_apikey_revoke",
        )
        return [revoke, *super().get_urls()]

    def revoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A confirmation page; its POST revokes the key (refused at once in this process,
        within TOLLGATE_AUTH_CACHE_SECONDS in the others)."""
        key = self.get_object(request, object_id)
        if key is None:
            raise Http404(f"No API key with id {object_id!r}.")
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        change_url = reverse("admin:gateway_apikey_change", args=[key.pk])
        if request.method == "POST":
            if key.revoked_at is None:
                key.revoke()
                auth.forget(key.prefix)
                self.message_user(request, f"The key {key.prefix}… is revoked.", messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Revoke this API key?",
            "key": key,
            "change_url": change_url,
        }
        return TemplateResponse(request, "admin/gateway/apikey/revoke.html", context)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        prefixes = list(queryset.filter(revoked_at=None).values_list("prefix", flat=True))
        queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        for prefix in prefixes:
            auth.forget(prefix)
        self.message_user(request, f"Revoked {len(prefixes)} key(s).")
