"""How the admin writes money, counts, changes and latencies (gateway.usage.figures)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.usage.figures import change, count, seconds, status_badge, usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0E-10"), "$0"),
        (Decimal("0.0123456789"), "$0.0123"),
        (Decimal("0.00014"), "$0.00014"),
        (Decimal("0.5"), "$0.50"),
        (Decimal("0.0000000001"), "$0.0000000001"),
        (Decimal("12.3456"), "$12.35"),
        (Decimal("1234567.891"), "$1,234,567.89"),
        (Decimal("-0.02"), "-$0.02"),
        (0.08615, "$0.0862"),
        (None, ""),
    ],
)
def test_money_has_significant_digits_not_ten_decimals(amount: object, shown: str) -> None:
    assert usd(amount) == shown  # type: ignore[arg-type]


def test_counts_changes_and_latencies() -> None:
    assert (count(1234567), count(None), count(Decimal("61.5"))) == ("1,234,567", "—", "61")
    assert [change(112, 100), change(95, 100), change(100, 100), change(5, 0)] == [
        "+12%", "-5%", "0%", "",
    ]  # fmt: skip
    assert [seconds(340), seconds(1234), seconds(95000)] == ["340 ms", "1.2 s", "95 s"]


def test_a_status_is_coloured_by_its_class() -> None:
    assert 'class="status status-2xx">200<' in status_badge(200)
    assert 'class="status status-499">499<' in status_badge(499, "client_disconnected")
    assert "rate_limit_exceeded" in status_badge(429, "rate_limit_exceeded")
    assert "status-5xx" in status_badge(502, "<b>")
    assert "<b>" not in status_badge(502, "<b>")  # escaped
