"""A server-rendered SVG chart of cost (bars) and calls (line) per day, for the usage report.

Plain SVG in the page: works offline, with no JavaScript and no chart library. Each day's bar
carries a ``<title>`` (the browser's tooltip) with its figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 900, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 20, 40
COST_COLOUR, CALLS_COLOUR = "#417690", "#d35400"


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n that is at least ``value`` (an axis maximum)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _money(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def daily_chart(days: Sequence[dict[str, Any]]) -> SafeString:
    """``days``: one dict per day with ``day``, ``cost_usd`` and ``calls``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    costs = [float(Decimal(day["cost_usd"])) for day in days]
    calls = [int(day["calls"]) for day in days]
    # Four grid steps, each a round number.
    max_cost = 4 * _nice_ceiling(max(costs, default=0) / 4)
    max_calls = 4 * _nice_ceiling(max(calls, default=0) / 4)
    slot = plot_w / max(len(days), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" viewBox="0 0 {WIDTH} '
        f'{HEIGHT}" role="img" aria-label="Cost and calls per day">'
    ]
    for tick in range(5):  # grid and both axes' labels
        fraction = tick / 4
        y = TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{COST_COLOUR}">{escape(_money(max_cost * fraction))}</text>'
            f'<text x="{LEFT + plot_w + 6}" y="{y + 4:.1f}" font-size="11" '
            f'fill="{CALLS_COLOUR}">{max_calls * fraction:,.0f}</text>'
        )
    points = []
    label_every = max(1, len(days) // 10)
    for index, day in enumerate(days):
        x = LEFT + slot * index
        bar_h = plot_h * costs[index] / max_cost
        label = escape(f"{day['day'].isoformat()}: {_money(costs[index])}, {calls[index]:,} calls")
        parts.append(
            f'<rect class="cost-bar" x="{x + slot * 0.15:.1f}" y="{TOP + plot_h - bar_h:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{bar_h:.1f}" fill="{COST_COLOUR}">'
            f"<title>{label}</title></rect>"
        )
        points.append(f"{x + slot / 2:.1f},{TOP + plot_h * (1 - calls[index] / max_calls):.1f}")
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'font-size="11">{day["day"].strftime("%b %d")}</text>'
            )
    if points:
        parts.append(
            f'<polyline class="calls-line" points="{" ".join(points)}" fill="none" '
            f'stroke="{CALLS_COLOUR}" stroke-width="2"/>'
        )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="12" fill="{COST_COLOUR}">■ cost (USD, '
        f'left axis)</text><text x="{LEFT + 200}" y="{HEIGHT - 6}" font-size="12" '
        f'fill="{CALLS_COLOUR}">— calls (right axis)</text></svg>'
    )
    return mark_safe("".join(parts))  # every interpolated text is escaped above
