"""The daily rollup of the ledger (``UsageDaily``): one row per day (UTC) x tenant x key x model x
provider, where model is the model the caller asked for (``requested_model``).

Two ways in, giving identical totals:

- ``add_to_rollup``: the ledger writer sums each batch in Python and upserts the sums
  (``INSERT ... ON CONFLICT ... DO UPDATE SET calls = calls + excluded.calls, ...``, one
  ``executemany``) in the transaction that inserts the batch, so the rollup never lags the ledger.
- ``rebuild_rollup``: deletes a date range of the rollup and recomputes it from the ledger with
  one ``INSERT ... SELECT ... GROUP BY``, in one transaction (``manage.py rebuild_usage_daily``).

Both work on SQLite and PostgreSQL. A call is an error when its status code is 400 or more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, DecimalField, IntegerField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate

from gateway.models import UsageDaily, UsageRecord

KEY_COLUMNS = ("day", "tenant_id", "api_key_id", "model", "provider")
INT_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "image_count",
    "input_characters",
)
DECIMAL_COLUMNS = ("audio_seconds", "cost_usd")
SUM_COLUMNS = ("calls", "errors", *INT_COLUMNS, *DECIMAL_COLUMNS)
"""The rollup's counters: each is added up, never overwritten."""

_created_at = UsageRecord._meta.get_field("created_at")


def _day(value: object) -> date:
    """The UTC day of a row's ``created_at`` (a datetime, or a string from the spool file)."""
    if value is None:
        return datetime.now(UTC).date()
    if not isinstance(value, datetime):
        value = _created_at.to_python(value)
        assert isinstance(value, datetime)
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.date()


def _decimal(value: object) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, ...], list[Any]]:
    """Sum ledger rows (``UsageRecord`` field values) by rollup key, counters in ``SUM_COLUMNS``
    order."""
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        key = (
            _day(row.get("created_at")),
            row["tenant_id"],
            row["api_key_id"],
            row["requested_model"],
            row.get("provider") or "",
        )
        total = sums.get(key)
        if total is None:
            total = sums[key] = [0] * (2 + len(INT_COLUMNS)) + [Decimal(0), Decimal(0)]
        total[0] += 1
        if row["status_code"] >= 400:
            total[1] += 1
        for index, column in enumerate(INT_COLUMNS, start=2):
            total[index] += row.get(column) or 0
        total[-2] += _decimal(row.get("audio_seconds"))
        total[-1] += _decimal(row.get("cost_usd"))
    return sums


def _upsert_sql() -> str:
    quote = connection.ops.quote_name
    table = quote(UsageDaily._meta.db_table)
    columns = (*KEY_COLUMNS, *SUM_COLUMNS)
    updates = ", ".join(
        f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in SUM_COLUMNS
    )
    return (
        f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(quote(c) for c in KEY_COLUMNS)}) DO UPDATE SET {updates}"
    )


def add_to_rollup(cursor: Any, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add ledger rows to the rollup, with ``cursor`` (inside the caller's transaction)."""
    adapt = connection.ops.adapt_decimalfield_value
    params = [
        [
            connection.ops.adapt_datefield_value(day),
            *rest,
            *total[:-2],
            adapt(total[-2], 16, 3),
            adapt(total[-1], 20, 10),
        ]
        for (day, *rest), total in summarise(rows).items()
    ]
    if params:
        cursor.executemany(_upsert_sql(), params)


def days_of_ledger(start: date, end: date) -> dict[str, datetime]:
    """The ledger filter for the UTC days ``start`` to ``end`` (inclusive): ``created_at__gte``
    and ``created_at__lt``, as the rollup, the reports and the ledger's admin links count days."""
    return {
        "created_at__gte": datetime.combine(start, time.min, tzinfo=UTC),
        "created_at__lt": datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
    }


def rollup_query(start: date, end: date) -> QuerySet[UsageRecord, dict[str, Any]]:
    """The ledger summed by rollup key for the days ``start`` to ``end`` (inclusive), as a
    ``SELECT`` whose columns are ``KEY_COLUMNS`` then ``SUM_COLUMNS``."""
    ledger = UsageRecord.objects.filter(**days_of_ledger(start, end))
    whole: IntegerField[int, int] = IntegerField()
    sums: dict[str, Any] = {
        "calls": Count("id"),
        "errors": Count("id", filter=Q(status_code__gte=400)),
        **{c: Coalesce(Sum(c), Value(0), output_field=whole) for c in INT_COLUMNS},
        **{
            c: Coalesce(Sum(c), Value(Decimal(0)), output_field=DecimalField())
            for c in DECIMAL_COLUMNS
        },
    }
    # values() lists the plain fields before the annotated day, so that the column order is
    # the same whichever way Django orders a values() query's columns.
    return (
        ledger.annotate(rollup_day=TruncDate("created_at", tzinfo=UTC))
        .values("tenant_id", "api_key_id", "requested_model", "provider", "rollup_day")
        .annotate(**sums)
        .order_by()
    )


def rebuild_rollup(start: date, end: date) -> int:
    """Recompute the rollup of the days ``start`` to ``end`` (inclusive) from the ledger, in one
    transaction. Returns the number of rollup rows written."""
    quote = connection.ops.quote_name
    select, params = rollup_query(start, end).query.sql_with_params()
    columns = ("tenant_id", "api_key_id", "model", "provider", "day", *SUM_COLUMNS)
    table = quote(UsageDaily._meta.db_table)
    insert = f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) {select}"
    with transaction.atomic():
        UsageDaily.objects.filter(day__gte=start, day__lte=end).delete()
        with connection.cursor() as cursor:
            cursor.execute(insert, params)
            return int(cursor.rowcount)
