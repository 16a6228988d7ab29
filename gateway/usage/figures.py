"""How the admin writes money, counts and changes: ``$0.0123`` and ``$12.34`` (three significant
digits below a dollar, cents above; never the ledger's ten decimals), ``12,345`` tokens, ``+12%``.

Templates use them as filters (``{% load figures %}``: ``usd``, ``count``, ``change``); admin
columns and the report's chart call them directly. A status is a badge coloured by its class
(``status_badge``): green 2xx, amber 4xx, red 5xx, grey 499 (the client left).
"""

from __future__ import annotations

from decimal import Decimal

from django.utils.html import format_html
from django.utils.safestring import SafeString

SIGNIFICANT_DIGITS = 3
"""Of an amount under a dollar: $0.0123, $0.00014."""


def usd(value: Decimal | float | int | None) -> str:
    if value is None:
        return ""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if amount == 0:
        return "$0"
    if amount >= 1:
        return f"{sign}${amount:,.2f}"
    decimals = max(SIGNIFICANT_DIGITS - 1 - amount.adjusted(), 2)
    whole, fraction = f"{amount:.{decimals}f}".split(".")
    return f"{sign}${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def count(value: int | Decimal | None) -> str:
    """A whole number with thousands separators; an em dash for none (a failed call's tokens)."""
    return "—" if value is None else f"{int(value):,}"


def change(current: Decimal | float | int, previous: Decimal | float | int) -> str:
    """``current`` against ``previous`` in percent: ``+12%``, ``-5%``, ``0%``; empty when there
    was nothing before (no percentage of nothing)."""
    if not previous:
        return ""
    percent = (Decimal(str(current)) - Decimal(str(previous))) * 100 / Decimal(str(previous))
    return f"{percent:+.0f}%" if percent.quantize(Decimal(1)) else "0%"


def seconds(milliseconds: int) -> str:
    """A latency: ``340 ms``, ``1.2 s``, ``95 s``."""
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    return f"{milliseconds / 1000:.1f} s" if milliseconds < 10_000 else f"{milliseconds // 1000} s"


def status_badge(status: int, error_type: str = "") -> SafeString:
    """The status code, coloured by its class, with the error code under it."""
    kind = "499" if status == 499 else f"{status // 100}xx"
    badge = format_html('<span class="status status-{}">{}</span>', kind, status)
    if not error_type:
        return badge
    return format_html('{}<span class="error-type">{}</span>', badge, error_type)
