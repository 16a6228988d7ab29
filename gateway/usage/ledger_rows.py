"""The ledger's rows: mending what the database would refuse, and inserting a batch.

``clean_row`` mends a row where it is built (``LedgerWriter.record``) and where one is replayed
or retried from the dead letter; ``insert_rows`` lands a batch idempotently, with its rollup, in
one transaction. Both are the writer's (``ledger.py``), and the admin's retry of a dead letter
uses them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from django.db import connection, transaction
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import (
    BooleanField,
    CharField,
    DateTimeField,
    DecimalField,
    Field,
    ForeignKey,
    IntegerField,
    TextField,
)
from django.db.models.fields import AutoFieldMixin

from gateway.models import UsageRecord
from gateway.storable import storable_text
from gateway.usage.ledger_files import Row, encode, json_value
from gateway.usage.rollup import add_to_rollup
from providers.ids import time_ordered_hex

__all__ = ["Row", "as_text", "clean_row", "insert_fields", "insert_rows", "preparer"]


_RANGES = BaseDatabaseOperations.integer_field_ranges
_TEXT_FIELDS = [
    (field.attname, field.max_length)
    for field in UsageRecord._meta.concrete_fields
    if field.get_internal_type() == "CharField"
]
_INT_FIELDS = [
    (field.attname, *_RANGES[field.get_internal_type()])
    for field in UsageRecord._meta.concrete_fields
    if field.get_internal_type() in _RANGES and not field.is_relation and not field.primary_key
]
_DECIMAL_FIELDS = [
    (field.attname, Decimal(10) ** (field.max_digits - field.decimal_places) - 1)
    for field in UsageRecord._meta.concrete_fields
    if isinstance(field, DecimalField)
]


def clean_row(row: Row) -> Row:
    """Mend, in place, what the database would refuse in a row: NUL characters and lone
    surrogates in text (replaced by U+FFFD), text over its column's length (cut), counts
    outside their column's range (clamped), decimals that are not finite or too large. A row
    without a request id gets one: the id is what keeps a replayed row from counting twice."""
    for name, limit in _TEXT_FIELDS:
        value = row.get(name)
        if isinstance(value, str) and (
            not value.isascii() or "\x00" in value or (limit and len(value) > limit)
        ):  # the rest, nearly every value, is kept as it is without a call
            row[name] = storable_text(value, limit)
    for name, low, high in _INT_FIELDS:
        value = row.get(name)
        if value is not None and not (isinstance(value, int) and low <= value <= high):
            row[name] = _clamp_int(value, low, high)
    for name, largest in _DECIMAL_FIELDS:
        value = row.get(name)
        if value is not None and not (
            isinstance(value, Decimal) and value.is_finite() and abs(value) <= largest
        ):
            row[name] = _clamp_decimal(value, largest)
    if not row.get("request_id"):
        row["request_id"] = "req_" + time_ordered_hex()
    return row


def _clamp_int(value: object, low: int, high: int) -> int | None:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(number, low), high)


def _clamp_decimal(value: object, high: Decimal) -> Decimal:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)
    if not number.is_finite():
        return Decimal(0)
    return min(max(number, -high), high)


def as_text(row: Row) -> str:
    try:
        return encode(row).decode().rstrip("\n")
    except TypeError:
        return repr(row)


class _Replayed(Exception):
    """A statement of the plain insert skipped a row already in the ledger: roll it back."""


def insert_rows(rows: list[Row]) -> int:
    """Insert a batch, skipping rows whose request id is already in the ledger, and add the rows
    that landed to the rollup, in one transaction. Returns how many landed.

    Each statement is an ``INSERT ... ON CONFLICT (request_id) DO NOTHING`` of many rows; values
    are adapted by each field, so every database backend gets what it expects, and missing
    fields take defaults. When every row of every statement lands (the database's count of
    changed rows says so), that is all. When one did not (a replay of rows already written), the
    transaction is rolled back and the batch is inserted again with ``RETURNING request_id``,
    which tells the rows that are new, so that the rollup never counts one twice.

    Why not ``RETURNING`` always: SQLite hands back its rows one step at a time, and Python's
    driver lets go of the GIL and takes it again around each step. At a ledger row per call,
    that is a GIL hand-off with the event loop per call, where one per statement will do."""
    unique: dict[str, Row] = {}
    for row in rows:
        unique.setdefault(row["request_id"], row)
    fields = insert_fields()
    postgres = connection.vendor == "postgresql"
    values = _values(fields, unique.values(), for_json=postgres)
    statements = (
        _json_statement(fields, values)
        if postgres
        else _values_statements(fields, values, list(unique.values()))
    )
    try:
        _insert(statements, unique, returning=False)
        return len(unique)
    except _Replayed:
        return _insert(statements, unique, returning=True)


_Statement = tuple[str, list[Any], int]
"""SQL without its ``RETURNING``, its parameters, and how many rows it inserts at most."""


def _values(fields: list[Any], rows: Iterable[Row], for_json: bool = False) -> list[list[Any]]:
    preparers = [(field.attname, field, preparer(field, for_json)) for field in fields]
    return [
        [
            prepare(row[name] if name in row else field.get_default())
            for name, field, prepare in preparers
        ]
        for row in rows
    ]


def _values_statements(
    fields: list[Any], values: list[list[Any]], rows: list[Row]
) -> list[_Statement]:
    """Multi-row ``INSERT ... VALUES``, as many rows to a statement as the backend takes
    parameters (SQLite: 999)."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    per_statement = max(1, connection.ops.bulk_batch_size(fields, rows))
    statements = []
    for start in range(0, len(values), per_statement):
        chunk = values[start : start + per_statement]
        statements.append(
            (
                f"INSERT INTO {quote(UsageRecord._meta.db_table)} ({columns}) "
                f"VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({quote('request_id')}) DO NOTHING",
                [value for row_values in chunk for value in row_values],
                len(chunk),
            )
        )
    return statements


def _json_statement(fields: list[Any], values: list[list[Any]]) -> list[_Statement]:
    """PostgreSQL: the whole batch as one JSON parameter, unpacked by the server
    (``json_populate_recordset``, each value cast to its column's type as a literal would be).

    Why: psycopg merges parameters into the statement in Python, and parses a statement of more
    than 50 parameters afresh each time, placeholder by placeholder (it caches only shorter
    ones): for a batch of rows as ``VALUES``, that was nine tenths of the writer's time, on a
    thread that holds the GIL the event loop needs. This statement is short and takes one
    parameter, encoded in C (orjson)."""
    quote = connection.ops.quote_name
    table = quote(UsageRecord._meta.db_table)
    names = [field.column for field in fields]
    columns = ", ".join(quote(name) for name in names)
    document = orjson.dumps(
        [dict(zip(names, row_values, strict=True)) for row_values in values],
        default=json_value,
    ).decode()
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT {columns} "
        f"FROM json_populate_recordset(NULL::{table}, %s::json) "
        f"ON CONFLICT ({quote('request_id')}) DO NOTHING"
    )
    return [(sql, [document], len(values))]


def _insert(statements: list[_Statement], rows: dict[str, Row], returning: bool) -> int:
    """Run ``statements`` (``rows``' own) and add what landed to the rollup. Without
    ``returning``, raise ``_Replayed`` (the transaction rolled back) unless every row landed."""
    suffix = f" RETURNING {connection.ops.quote_name('request_id')}" if returning else ""
    landed: set[str] = set()
    with transaction.atomic(), connection.cursor() as cursor:
        for sql, params, count in statements:
            cursor.execute(sql + suffix, params)
            if returning:
                landed.update(request_id for (request_id,) in cursor.fetchall())
            elif cursor.rowcount != count:
                raise _Replayed
        if not returning:
            landed = set(rows)
        add_to_rollup(cursor, [row for key, row in rows.items() if key in landed])
    return len(landed)


def insert_fields() -> list[Any]:
    return [field for field in UsageRecord._meta.concrete_fields if not field.primary_key]


def _as_it_is(value: Any, internal_type: str) -> Any:
    return value


_PLAIN_TYPES: dict[type[Field[Any, Any]], type] = {
    CharField: str,
    TextField: str,
    BooleanField: bool,
}


def preparer(field: Field[Any, Any], for_json: bool = False) -> Callable[[Any], Any]:
    """``field.get_db_prep_save(value, connection)``, with a short cut for the values a row
    holds: text, flags and integers, which it would hand on as they are (integers through the
    backend's adapter, which types them for PostgreSQL), and finite decimals and aware times,
    which it would hand to the backend's adapter after checks they pass. Anything else (a
    naive time, a number as text, a value of an unexpected type) takes Django's whole way, with
    this thread's connection rather than its proxy (a thread-local lookup at each use). The
    writer prepares every field of every row, on a thread that holds the GIL the event loop
    needs: the way through Django was a third of the writer's time. ``for_json``: integers as
    they are, without the backend's adapter (PostgreSQL's wraps each in a type marker, which a
    JSON document does not need)."""
    target = field.target_field if isinstance(field, ForeignKey) else field
    ops = connection.ops
    this_thread = ops.connection

    def django(value: Any) -> Any:
        return field.get_db_prep_save(value, this_thread)

    if isinstance(target, AutoFieldMixin):  # a foreign key's value: the other table's id
        validate = ops.validate_autopk_value

        def row_id(value: Any) -> Any:
            if value is None:
                return None
            return validate(value) if type(value) is int else django(value)

        return row_id
    if isinstance(target, IntegerField):
        adapt, internal_type = ops.adapt_integerfield_value, target.get_internal_type()
        if for_json:
            adapt = _as_it_is

        def integer(value: Any) -> Any:
            if value is None:
                return None
            return adapt(value, internal_type) if type(value) is int else django(value)

        return integer
    if isinstance(target, DecimalField):
        adapt_decimal = ops.adapt_decimalfield_value
        digits, places = target.max_digits, target.decimal_places

        def decimal(value: Any) -> Any:
            if type(value) is Decimal and value.is_finite():
                return adapt_decimal(value, digits, places)
            return django(value)

        return decimal
    if isinstance(target, DateTimeField):
        adapt_time = ops.adapt_datetimefield_value

        def moment(value: Any) -> Any:
            if type(value) is datetime and value.utcoffset() is not None:
                return adapt_time(value)
            return django(value)

        return moment
    plain = _PLAIN_TYPES.get(type(target))
    if plain is not None:

        def as_is(value: Any) -> Any:
            return value if value is None or type(value) is plain else django(value)

        return as_is
    return django
