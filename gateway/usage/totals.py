"""Totals of the rows the ledger list shows (calls, errors, tokens, cost), above the list.

From the daily rollup whenever the list's filters are ones it has (whole UTC days, tenant, key,
model, provider), as every link of the usage report is: a sum over at most a few thousand
rollup rows whatever the size of the ledger. Any other filter (status, endpoint, stream, a
search) is summed over the filtered ledger rows themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from gateway.models import UsageDaily, UsageRecord

ROLLUP_FIELDS = {
    "tenant__id__exact": "tenant_id",
    "api_key__id__exact": "api_key_id",
    "requested_model": "model",
    "provider": "provider",
}
"""The ledger list's parameters the rollup has, and its column for each."""
PAGE_PARAMETERS = frozenset({"o", "p"})
"""Parameters that order or page the list without changing its rows."""


def _whole_day(value: str) -> date | None:
    """The UTC day that starts at ``value`` (a date, or a datetime at UTC midnight)."""
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            return None
        moment = datetime.combine(day, time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    moment = moment.astimezone(UTC)
    return moment.date() if moment.time() == time.min else None


def rollup_filter(params: Mapping[str, str]) -> dict[str, Any] | None:
    """The rollup filter that selects the same calls as the list's ``params``; None when the
    rollup cannot (a filter it has no column for, or a time that is not a day's start)."""
    where: dict[str, Any] = {}
    for name, value in params.items():
        if name in PAGE_PARAMETERS:
            continue
        if name in ROLLUP_FIELDS:
            where[ROLLUP_FIELDS[name]] = value
        elif name in ("created_at__gte", "created_at__lt"):
            day = _whole_day(value)
            if day is None:
                return None
            where["day__gte" if name == "created_at__gte" else "day__lt"] = day
        else:
            return None
    return where


def list_totals(params: Mapping[str, str], ledger: QuerySet[UsageRecord]) -> dict[str, Any]:
    """``calls``, ``errors``, ``prompt_tokens``, ``completion_tokens``, ``cost_usd`` of the
    calls ``ledger`` (the list's filtered rows) holds, and ``source``: "rollup" or "ledger"."""
    where = rollup_filter(params)
    if where is not None:
        sums = UsageDaily.objects.filter(**where).aggregate(
            calls=Sum("calls"),
            errors=Sum("errors"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        source = "rollup"
    else:
        sums = ledger.order_by().aggregate(
            calls=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        source = "ledger"
    totals = {name: value or 0 for name, value in sums.items()}
    totals["cost_usd"] = Decimal(totals["cost_usd"])
    totals["error_rate"] = totals["errors"] / totals["calls"] if totals["calls"] else 0.0
    totals["source"] = source
    return totals
