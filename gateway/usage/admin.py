"""Admin pages of the ledger (``UsageRecord``) and of its daily rollup (``UsageDaily``), both
read-only, built to stay fast on a ledger of millions of rows:

- no full-table ``COUNT``: ``show_full_result_count = False``, and ``EstimatedCountPaginator``
  asks PostgreSQL's planner for the row count of a large result instead of counting it;
- no ``date_hierarchy`` (its year/month links scan the whole table): a date list filter with
  fixed links (today, past 7 days, this month...), whose ``created_at__gte`` / ``created_at__lt``
  parameters the usage report's links use too;
- no filter whose choices come from ``SELECT DISTINCT`` over the ledger: status classes and
  endpoints are fixed lists, models and providers are read from the (much smaller) rollup.

The usage report page (``gateway.usage.views``) is linked from the admin index
(``admin/tollgate_index.html``).
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import orjson
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from gateway.models import LedgerDeadLetter, UsageDaily, UsageRecord
from gateway.usage.endpoints import Endpoint
from gateway.usage.figures import count, seconds, status_badge, usd
from gateway.usage.ledger_rows import clean_row, insert_rows
from gateway.usage.reports import rollup_values
from gateway.usage.totals import list_totals

admin.site.index_template = "admin/tollgate_index.html"

EXACT_COUNT_BELOW = 10_000
"""A result the planner expects to be smaller than this is counted exactly."""
ESTIMATED = "Counted by the gateway: the upstream did not report them."


def _clipped(text: str) -> SafeString:
    """Long names cut with an ellipsis, whole in the tooltip: the list keeps its width."""
    return format_html('<span class="cell-clip" title="{}">{}</span>', text, text)


class EstimatedCountPaginator(Paginator):
    """Counts exactly on SQLite and for small results; on PostgreSQL a large result's count is the
    planner's estimate (``EXPLAIN``), which costs no scan. Page links past the true end are the
    price: the admin answers such a page with its "page out of range" redirect."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if connection.vendor != "postgresql" or not isinstance(queryset, QuerySet):
            return super().count
        sql, params = queryset.order_by().values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        return super().count if estimate < EXACT_COUNT_BELOW else estimate


class StatusClassFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status_class"
    RANGES = {"2xx": (200, 300), "4xx": (400, 500), "5xx": (500, 600)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in self.RANGES] + [("errors", "all errors (>= 400)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "errors":
            return queryset.filter(status_code__gte=400)
        if value in self.RANGES:
            low, high = self.RANGES[value]
            return queryset.filter(status_code__gte=low, status_code__lt=high)
        return queryset


class EndpointFilter(admin.SimpleListFilter):
    title = "endpoint"
    parameter_name = "endpoint"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(endpoint.value, endpoint.value) for endpoint in Endpoint]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(endpoint=self.value()) if self.value() else queryset


class RollupValuesFilter(admin.SimpleListFilter):
    """Choices from the distinct values in the rollup, not the ledger."""

    rollup_field = ""
    ledger_field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value or "(none)") for value in rollup_values(self.rollup_field)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.ledger_field: value})


class ModelFilter(RollupValuesFilter):
    title = "model"
    parameter_name = "requested_model"
    rollup_field = "model"
    ledger_field = "requested_model"


class ProviderFilter(RollupValuesFilter):
    title = "provider"
    parameter_name = "provider"
    rollup_field = "provider"
    ledger_field = "provider"


class UsageColumns:
    """Columns of the ledger and of its rollup: short, so that the lists fit a 1366 px screen."""

    @admin.display(description="tenant", ordering="tenant__name")
    def tenant_name(self, row: UsageRecord | UsageDaily) -> SafeString:
        return _clipped(row.tenant.name)

    @admin.display(description="key")
    def key(self, row: UsageRecord | UsageDaily) -> SafeString:
        return format_html('<span title="{}">{}…</span>', row.api_key.name, row.api_key.prefix)

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, row: UsageRecord | UsageDaily) -> str:
        return usd(row.cost_usd)


class ReadOnlyAdmin(admin.ModelAdmin):
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin, UsageColumns):
    """The ledger, read-only. The list keeps to the columns an operator scans, so that it fits
    a 1366 px screen; every field is on the record's page, grouped. Report links filter it with
    ``tenant__id__exact``, ``api_key__id__exact``, ``requested_model``, ``provider`` and
    ``created_at__gte`` / ``created_at__lt``; the totals of the filtered rows are above it
    (``gateway.usage.totals``)."""

    list_display = ("when", "tenant_name", "key", "called", "status", "tokens", "cost", "latency")
    list_display_links = ("when",)
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        StatusClassFilter,
        EndpointFilter,
        ModelFilter,
        ProviderFilter,
        "tenant",
        "stream",
    )
    search_fields = ("=request_id",)
    list_select_related = ("tenant", "api_key")

    class Media:
        css = {"all": ("gateway/admin.css",)}

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The report's drill-down links: a tenant or a key by id.
        if lookup in ("tenant__id__exact", "api_key__id__exact"):
            return True
        return super().lookup_allowed(lookup, value, request)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if isinstance(response, TemplateResponse) and context and "cl" in context:
            context["totals"] = list_totals(request.GET, context["cl"].queryset)
        return response

    # --- the list's columns ----------------------------------------------------------------------

    @admin.display(description="time (UTC)", ordering="created_at")
    def when(self, row: UsageRecord) -> str:
        return f"{row.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"

    @admin.display(description="model")
    def called(self, row: UsageRecord) -> SafeString:
        """The model asked for, with neutral tags for what is not a plain chat call."""
        tags = [row.endpoint] if row.endpoint != Endpoint.CHAT_COMPLETIONS.value else []
        if row.stream:
            tags.append("stream")
        if row.fallback:
            tags.append(f"fallback: {row.served_model}")
        return format_html(
            "{}{}",
            _clipped(row.requested_model),
            format_html_join("", '<span class="tag">{}</span>', ((tag,) for tag in tags)),
        )

    @admin.display(description="status", ordering="status_code")
    def status(self, row: UsageRecord) -> SafeString:
        return status_badge(row.status_code, row.error_type)

    @admin.display(description="tokens in → out")
    def tokens(self, row: UsageRecord) -> SafeString:
        """Tokens, or the units a call was billed by; ``≈`` when the gateway counted them."""
        if row.image_count:
            used = f"{row.image_count:,} image{'s' if row.image_count > 1 else ''}"
        elif row.input_characters:
            used = f"{row.input_characters:,} characters"
        elif row.audio_seconds:
            used = f"{row.audio_seconds:,.1f} s of audio"
        elif row.prompt_tokens is None and row.completion_tokens is None:
            return format_html('<span class="quiet">{}</span>', "—")
        else:
            used = f"{count(row.prompt_tokens)} → {count(row.completion_tokens)}"
        if row.usage_estimated:
            return format_html('<span title="{}">≈ {}</span>', ESTIMATED, used)
        return format_html("{}", used)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, row: UsageRecord) -> str:
        return seconds(row.latency_ms)

    # --- the record's page -----------------------------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: UsageRecord | None = None) -> Any:
        """Grouped: who called, what, what it used and cost, how long it took, what went wrong.
        Units a call did not use are left out."""
        if obj is None:
            return super().get_fieldsets(request, obj)
        units = [
            name
            for name in ("image_count", "input_characters", "audio_seconds")
            if getattr(obj, name) is not None
        ]
        usage = ["token_counts", *units]
        if units or obj.prompt_tokens is not None or obj.completion_tokens is not None:
            usage.append("counted_by")  # when nothing was counted, there is no one to name
        groups: list[tuple[str, dict[str, Any]]] = [
            ("Who", {"fields": (("tenant", "api_key"), "request_id")}),
            (
                "What",
                {
                    "fields": (
                        ("endpoint", "streamed"),
                        ("requested_model", "served_by"),
                        ("provider", "upstream_model"),
                        "status",
                    )
                },
            ),
            ("Usage", {"fields": usage}),
            ("Cost", {"fields": (("cost", "exact_cost"),)}),
            ("Timing", {"fields": (("when", "latency"), "attempts")}),
        ]
        if obj.status_code >= 400:
            groups.append(("Error", {"fields": ("error_type", "message")}))
        return groups

    @admin.display(description="served by")
    def served_by(self, row: UsageRecord) -> str:
        if row.fallback:
            return f"{row.served_model} (a fallback: {row.requested_model} failed)"
        return row.served_model or row.requested_model

    @admin.display(description="streamed")
    def streamed(self, row: UsageRecord) -> str:
        return "yes" if row.stream else "no"

    @admin.display(description="tokens")
    def token_counts(self, row: UsageRecord) -> SafeString:
        parts = [
            ("prompt", row.prompt_tokens),
            ("completion", row.completion_tokens),
            ("total", row.total_tokens),
            ("cache read", row.cache_read_tokens),
            ("cache write", row.cache_write_tokens),
            ("reasoning", row.reasoning_tokens),
        ]
        shown = [(name, count(value)) for name, value in parts if value is not None]
        if not shown:
            return format_html('<span class="quiet">{}</span>', "none reported")
        return format_html_join(" · ", "{} {}", ((value, name) for name, value in shown))

    @admin.display(description="counted by")
    def counted_by(self, row: UsageRecord) -> str:
        return "the gateway (an estimate)" if row.usage_estimated else "the upstream"

    @admin.display(description="exact cost (USD)")
    def exact_cost(self, row: UsageRecord) -> str:
        return f"{row.cost_usd.normalize():f}"

    @admin.display(description="message")
    def message(self, row: UsageRecord) -> SafeString:
        if not row.error_message:
            return format_html('<span class="quiet">{}</span>', "(none kept)")
        return format_html('<div class="error-message">{}</div>', row.error_message)


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin, UsageColumns):
    """The rollup, read-only: what the usage report sums."""

    list_display = (
        "day",
        "tenant_name",
        "key",
        "model_name",
        "provider",
        "calls",
        "errors",
        "tokens",
        "cost",
    )
    list_filter = (("day", admin.DateFieldListFilter), ProviderFilter)
    list_select_related = ("tenant", "api_key")
    ordering = ("-day", "tenant", "api_key", "model")

    class Media:
        css = {"all": ("gateway/admin.css",)}

    @admin.display(description="model", ordering="model")
    def model_name(self, row: UsageDaily) -> SafeString:
        return _clipped(row.model)

    @admin.display(description="tokens in → out")
    def tokens(self, row: UsageDaily) -> str:
        return f"{count(row.prompt_tokens)} → {count(row.completion_tokens)}"


@admin.register(LedgerDeadLetter)
class LedgerDeadLetterAdmin(admin.ModelAdmin):
    """Ledger rows the database refused on their own, with its reason. Fix the cause (recreate a
    deleted tenant, say), then "Insert into the ledger" retries them; rows already in the
    ledger are skipped, never counted twice."""

    list_display = ("created_at", "request_id", "tenant_id", "short_reason")
    search_fields = ("=request_id",)
    readonly_fields = ("created_at", "request_id", "tenant_id", "reason", "row")
    actions = ("retry",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="reason")
    def short_reason(self, obj: LedgerDeadLetter) -> str:
        return obj.reason if len(obj.reason) <= 120 else obj.reason[:119] + "…"

    @admin.action(description="Insert into the ledger", permissions=["delete"])
    def retry(self, request: HttpRequest, queryset: QuerySet[LedgerDeadLetter]) -> None:
        landed, refused = 0, []
        for letter in queryset:
            try:
                insert_rows([clean_row(orjson.loads(letter.row))])
            except Exception as error:  # still refused: keep it, say why
                refused.append(f"{letter.request_id}: {type(error).__name__}: {error}")
                continue
            letter.delete()
            landed += 1
        if landed:
            self.message_user(request, f"{landed} row(s) are in the ledger.", messages.SUCCESS)
        for reason in refused[:10]:
            self.message_user(request, f"Still refused: {reason}", messages.ERROR)
