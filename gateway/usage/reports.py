"""Usage report queries. Every one reads the daily rollup (``UsageDaily``), never the ledger, so a
month's report costs the same at a thousand calls as at millions.

``ReportFilter`` is what a report is about (a date range and optional tenant, key, model,
provider); the admin report page (``gateway.usage.views``) and the tenants' ``GET /v1/usage``
both build one and ask the functions below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.db.models import F, Max, QuerySet, Sum

from gateway.models import UsageDaily
from gateway.usage.rollup import DECIMAL_COLUMNS, INT_COLUMNS
from providers.errors import InvalidRequest

COUNTERS = ("calls", "errors", *INT_COLUMNS, *DECIMAL_COLUMNS)
"""The rollup's counters, in the order reports and CSV files show them."""
TOKEN_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
MAX_DAYS = 366
"""Longest range one report (or one ``/v1/usage`` call) covers."""


def today() -> date:
    return datetime.now(UTC).date()


def this_month() -> tuple[date, date]:
    """The first and last day of the current month (UTC)."""
    first = today().replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


@dataclass(frozen=True)
class ReportFilter:
    start: date
    end: date
    tenant_id: int | None = None
    api_key_id: int | None = None
    model: str = ""
    provider: str = ""

    def chosen(self, tenant: str, key: str, model: str, provider: str) -> dict[str, Any]:
        """The filters that are set, under the names a query, a URL or a form uses for them."""
        pairs = (
            (tenant, self.tenant_id),
            (key, self.api_key_id),
            (model, self.model or None),
            (provider, self.provider or None),
        )
        return {name: value for name, value in pairs if value is not None}

    def rollups(self) -> QuerySet[UsageDaily]:
        return UsageDaily.objects.filter(
            day__gte=self.start,
            day__lte=self.end,
            **self.chosen("tenant_id", "api_key_id", "model", "provider"),
        )

    def narrowed(self, **fields: Any) -> ReportFilter:
        return replace(self, **fields)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    def previous(self) -> ReportFilter:
        """The same report over the period of the same length just before this one."""
        length = timedelta(days=(self.end - self.start).days + 1)
        return replace(self, start=self.start - length, end=self.start - timedelta(days=1))


_rollup_values_cache: dict[str, tuple[int | None, list[str]]] = {}
"""Each column's distinct values, with the rollup's newest row id when they were read."""


def rollup_values(column: str, limit: int = 200) -> list[str]:
    """The distinct values of a rollup column ("model", "provider"), as filter choices: read
    from the rollup, which is much smaller than the ledger, and read again only once it has a
    new row (a value never seen before comes in a new row, with a new id): the ``DISTINCT``
    scans the whole rollup (~50 ms at 180,000 rows), the newest id is one index probe."""
    newest = UsageDaily.objects.aggregate(newest=Max("id"))["newest"]
    cached = _rollup_values_cache.get(column)
    if cached is not None and cached[0] == newest:
        return cached[1]
    distinct = UsageDaily.objects.order_by(column).values_list(column, flat=True).distinct()
    values = list(distinct[:limit])
    _rollup_values_cache[column] = (newest, values)
    return values


def _sums() -> dict[str, Sum]:
    return {name: Sum(name) for name in COUNTERS}


def _zeroed(row: dict[str, Any]) -> dict[str, Any]:
    """A grouped row with ``None`` sums (no rows) as zeros, and its error rate."""
    for name in COUNTERS:
        if row.get(name) is None:
            row[name] = Decimal(0) if name in DECIMAL_COLUMNS else 0
    row["tokens"] = sum(row[name] for name in TOKEN_COLUMNS)
    row["error_rate"] = row["errors"] / row["calls"] if row["calls"] else 0.0
    return row


def totals(report: ReportFilter) -> dict[str, Any]:
    return _zeroed(report.rollups().aggregate(**_sums()))


def per_day(report: ReportFilter) -> list[dict[str, Any]]:
    """One entry per day of the range, days without usage included (as zeros)."""
    found = {
        row["day"]: row
        for row in report.rollups().values("day").annotate(**_sums()).order_by("day")
    }
    return [_zeroed(found.get(day, {"day": day})) for day in report.days()]


def by_tenant(report: ReportFilter) -> list[dict[str, Any]]:
    rows = (
        report.rollups()
        .values("tenant_id", tenant_name=F("tenant__name"))
        .annotate(**_sums())
        .order_by("-cost_usd", "tenant_name")
    )
    return [_zeroed(row) for row in rows]


def by_model(report: ReportFilter) -> list[dict[str, Any]]:
    rows = report.rollups().values("model").annotate(**_sums()).order_by("-cost_usd", "model")
    return [_zeroed(row) for row in rows]


def by_key(report: ReportFilter) -> list[dict[str, Any]]:
    rows = (
        report.rollups()
        .values("api_key_id", key_prefix=F("api_key__prefix"), key_name=F("api_key__name"))
        .annotate(**_sums())
        .order_by("-cost_usd", "key_prefix")
    )
    return [_zeroed(row) for row in rows]


CSV_COLUMNS = ("day", "tenant", "key", "key_name", "model", "provider", *COUNTERS)


def csv_rows(report: ReportFilter) -> Iterator[list[Any]]:
    """The filtered rollup, one row per day x tenant x key x model x provider, streamed from the
    database in chunks (``iterator``), never whole in memory."""
    rows = report.rollups().order_by("day", "tenant__name", "api_key__prefix", "model", "provider")
    values = rows.values_list(
        "day", "tenant__name", "api_key__prefix", "api_key__name", "model", "provider", *COUNTERS
    )
    for row in values.iterator(chunk_size=2000):
        yield list(row)


# --- tenants' own usage (GET /v1/usage) -----------------------------------------------------------

GROUPS = {"day": ("day",), "model": ("model",), "key": ("api_key__prefix", "api_key__name")}


def tenant_usage(tenant_id: int, start: date, end: date, group_by: str) -> list[dict[str, Any]]:
    """A tenant's own usage, grouped by day, model or key, as JSON-ready dicts. The tenant comes
    from the caller's key, never from the request, so no tenant sees another's usage."""
    rows = (
        ReportFilter(start, end, tenant_id=tenant_id)
        .rollups()
        .values(*GROUPS[group_by])
        .annotate(**_sums())
        .order_by(*GROUPS[group_by])
    )
    result = []
    for row in rows:
        entry: dict[str, Any] = {}
        if group_by == "day":
            entry["day"] = row["day"].isoformat()
        elif group_by == "model":
            entry["model"] = row["model"]
        else:
            entry["key"] = row["api_key__prefix"]
            entry["key_name"] = row["api_key__name"]
        for name in COUNTERS:
            value = row[name] or 0
            entry[name] = float(value) if name in DECIMAL_COLUMNS else int(value)
        result.append(entry)
    return result


def _parse_day(params: Mapping[str, str], name: str, default: date) -> date:
    value = params.get(name)
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date, YYYY-MM-DD.", param=name) from None


def _usage_query(params: Mapping[str, str]) -> tuple[date, date, str]:
    first, last = this_month()
    start, end = _parse_day(params, "start", first), _parse_day(params, "end", last)
    group_by = params.get("group_by") or "day"
    if group_by not in GROUPS:
        raise InvalidRequest("'group_by' must be one of day, model, key.", param="group_by")
    if start > end:
        raise InvalidRequest("'start' is after 'end'.", param="start")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"A range covers at most {MAX_DAYS} days.", param="end")
    return start, end, group_by


@sync_to_async
def _tenant_usage_off_loop(tenant_id: int, start: date, end: date, group_by: str) -> Any:
    close_old_connections()  # the API skips Django's per-request housekeeping (gateway.api.handler)
    return tenant_usage(tenant_id, start, end, group_by)


async def usage_response(tenant_id: int, params: Mapping[str, str]) -> dict[str, Any]:
    """The body of ``GET /v1/usage``; bad parameters raise ``InvalidRequest`` (400)."""
    start, end, group_by = _usage_query(params)
    data = await _tenant_usage_off_loop(tenant_id, start, end, group_by)
    return {
        "object": "list",
        "data": data,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
    }
