"""What tenants and keys have spent, against their budgets, and when they last called: the
figures of the admin's tenant and key pages.

Nothing is written per call for them. Each is an annotation of the page's one query:

- **spend** sums the daily rollup (``UsageDaily``, indexed by tenant and day, and by key and
  day), over this month and over the budget's own period (a UTC day, a UTC month, or all time,
  as ``gateway.limits.policy`` counts budgets);
- **the last call** is the newest ledger row of the tenant or key: one probe of the ledger's
  ``(tenant, created_at)`` or ``(api_key, created_at)`` index per row shown. Exact to the
  second, unlike the rollup's day, and free on the request path, unlike a ``last_used``
  column the ledger writer would have to update. A call still in the writer's queue (at most a
  flush interval, half a second by default) is not seen yet.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.db.models import (
    Case,
    Count,
    DecimalField,
    Model,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from gateway.models import ApiKey, Tenant, UsageDaily, UsageRecord

ModelT = TypeVar("ModelT", bound=Model)

_MONEY: DecimalField[Decimal, Decimal] = DecimalField(max_digits=20, decimal_places=10)


def _rollup_cost(owner: str, since: date | None) -> Coalesce:
    """The rollup's cost of the outer row (``owner``: "tenant" or "api_key") since ``since``."""
    rows = UsageDaily.objects.filter(**{owner: OuterRef("pk")})
    if since is not None:
        rows = rows.filter(day__gte=since)
    total = rows.order_by().values(owner).annotate(total=Sum("cost_usd")).values("total")
    return Coalesce(Subquery(total, output_field=_MONEY), Value(Decimal(0)), output_field=_MONEY)


def _budget_spend(owner: str, today: date) -> Case:
    """Spend over the row's own budget period; none when it has no budget."""
    month = today.replace(day=1)
    return Case(
        When(budget_usd=None, then=Value(None, output_field=_MONEY)),
        When(budget_period="daily", then=_rollup_cost(owner, today)),
        When(budget_period="total", then=_rollup_cost(owner, None)),
        default=_rollup_cost(owner, month),
        output_field=_MONEY,
    )


def _newest_call(owner: str) -> Subquery:
    newest = UsageRecord.objects.filter(**{owner: OuterRef("pk")}).order_by("-created_at")
    return Subquery(newest.values("created_at")[:1])


def _with_spend(queryset: QuerySet[ModelT], owner: str, now: datetime) -> QuerySet[ModelT]:
    today = now.astimezone(UTC).date()
    return queryset.annotate(
        month_spend=_rollup_cost(owner, today.replace(day=1)),
        budget_spend=_budget_spend(owner, today),
        last_call=_newest_call(owner),
    )


def tenants_with_figures(queryset: QuerySet[Tenant], now: datetime) -> QuerySet[Tenant]:
    """Each tenant with ``month_spend``, ``budget_spend``, ``last_call`` and ``active_keys``
    (neither revoked nor expired), as of ``now``: the month and day are UTC's."""
    usable = ApiKey.objects.filter(tenant=OuterRef("pk"), revoked_at=None).filter(
        Q(expires_at=None) | Q(expires_at__gt=now)
    )
    active = usable.order_by().values("tenant").annotate(n=Count("pk")).values("n")
    return _with_spend(queryset, "tenant", now).annotate(
        active_keys=Coalesce(Subquery(active), Value(0))
    )


def keys_with_figures(queryset: QuerySet[ApiKey], now: datetime) -> QuerySet[ApiKey]:
    """Each key with ``month_spend``, ``budget_spend`` (its own budget) and ``last_call``."""
    return _with_spend(queryset, "api_key", now)


def budget_use(row: Any) -> float | None:
    """The share of its budget a row annotated above has spent (1.0: all of it); None without
    a budget. A budget of 0 is spent from the start."""
    if row.budget_usd is None:
        return None
    if not row.budget_usd:
        return 1.0
    return float(row.budget_spend / row.budget_usd)
