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
from typing import Any

import orjson
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from gateway.models import LedgerDeadLetter, UsageDaily, UsageRecord
from gateway.usage.endpoints import Endpoint
from gateway.usage.ledger import clean_row, insert_rows

admin.site.index_template = "admin/tollgate_index.html"

EXACT_COUNT_BELOW = 10_000
"""A result the planner expects to be smaller than this is counted exactly."""


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
        values = (
            UsageDaily.objects.order_by(self.rollup_field)
            .values_list(self.rollup_field, flat=True)
            .distinct()
        )
        return [(value, value or "(none)") for value in values[:200]]

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
class UsageRecordAdmin(ReadOnlyAdmin):
    """The ledger, read-only. Report links filter it with ``tenant__id__exact``,
    ``api_key__id__exact``, ``requested_model``, ``provider`` and ``created_at__gte`` /
    ``created_at__lt``."""

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
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        StatusClassFilter,
        EndpointFilter,
        ModelFilter,
        ProviderFilter,
        "stream",
    )
    search_fields = ("=request_id",)
    list_select_related = ("tenant", "api_key__tenant")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The report's drill-down links: a tenant or a key by id.
        if lookup in ("tenant__id__exact", "api_key__id__exact"):
            return True
        return super().lookup_allowed(lookup, value, request)


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    """The rollup, read-only: what the usage report sums."""

    list_display = (
        "day",
        "tenant",
        "api_key",
        "model",
        "provider",
        "calls",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    )
    list_filter = (("day", admin.DateFieldListFilter), ProviderFilter)
    list_select_related = ("tenant", "api_key__tenant")
    ordering = ("-day", "tenant", "api_key", "model")


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
