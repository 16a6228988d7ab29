"""Server-rendered SVG charts for the usage report, side by side: cost (bars) and calls (line)
per day, and tokens per day (input and output, stacked).

Plain SVG in the page: works offline, with no JavaScript and no chart library. Each day's bar
carries a ``<title>`` (the browser's tooltip) with its figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from gateway.usage.figures import usd

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 60, 20, 40
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
COST_COLOUR, CALLS_COLOUR = "#417690", "#d35400"
INPUT_COLOUR, OUTPUT_COLOUR = "#5b8c5a", "#a8c99a"


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


def _axis_maximum(values: Sequence[float], whole: bool = False) -> float:
    """A maximum for four grid steps, each a round number (a whole one, for counts)."""
    step = _nice_ceiling(max(values, default=0) / 4)
    return 4 * (max(step, 1.0) if whole else step)


def _y(value: float, maximum: float) -> float:
    return TOP + PLOT_H * (1 - value / maximum)


def _svg(
    css_class: str,
    label: str,
    days: Sequence[dict[str, Any]],
    left: tuple[float, str, Callable[[float], str]],
    right: tuple[float, str, Callable[[float], str]] | None,
    marks: list[str],
    legend: str,
) -> SafeString:
    """One chart: the grid with its axis labels (``left`` and optional ``right``: maximum,
    colour, label format), the day labels under the plot, then ``marks`` and ``legend``."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" viewBox="0 0 {WIDTH} '
        f'{HEIGHT}" role="img" aria-label="{escape(label)}">'
    ]
    for tick in range(5):
        fraction = tick / 4
        y = TOP + PLOT_H * (1 - fraction)
        maximum, colour, text = left
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{colour}">{escape(text(maximum * fraction))}</text>'
        )
        if right is not None:
            maximum, colour, text = right
            parts.append(
                f'<text x="{LEFT + PLOT_W + 6}" y="{y + 4:.1f}" font-size="11" '
                f'fill="{colour}">{escape(text(maximum * fraction))}</text>'
            )
    slot = PLOT_W / max(len(days), 1)
    label_every = max(1, len(days) // 8)
    for index, day in enumerate(days):
        if index % label_every == 0:
            parts.append(
                f'<text x="{LEFT + slot * (index + 0.5):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle" font-size="11">{day["day"].strftime("%b %d")}</text>'
            )
    parts.extend(marks)
    parts.append(f"{legend}</svg>")
    return mark_safe("".join(parts))  # every interpolated text is escaped


def _bar(css_class: str, index: int, slot: float, bottom: float, top: float, colour: str) -> str:
    return (
        f'<rect class="{css_class}" x="{LEFT + slot * (index + 0.15):.1f}" y="{top:.1f}" '
        f'width="{slot * 0.7:.1f}" height="{bottom - top:.1f}" fill="{colour}">'
    )


def _whole(value: float) -> str:
    return f"{value:,.0f}"


def daily_chart(days: Sequence[dict[str, Any]]) -> SafeString:
    """Cost (bars, left axis) and calls (line, right axis) per day. ``days``: one dict per day
    with ``day``, ``cost_usd`` and ``calls``."""
    costs = [float(Decimal(day["cost_usd"])) for day in days]
    calls = [int(day["calls"]) for day in days]
    max_cost, max_calls = _axis_maximum(costs), _axis_maximum(calls, whole=True)
    slot = PLOT_W / max(len(days), 1)
    marks, points = [], []
    for index, day in enumerate(days):
        tip = escape(f"{day['day'].isoformat()}: {usd(costs[index])}, {calls[index]:,} calls")
        top = _y(costs[index], max_cost)
        bar = _bar("cost-bar", index, slot, TOP + PLOT_H, top, COST_COLOUR)
        marks.append(f"{bar}<title>{tip}</title></rect>")
        points.append(f"{LEFT + slot * (index + 0.5):.1f},{_y(calls[index], max_calls):.1f}")
    if points:
        marks.append(
            f'<polyline class="calls-line" points="{" ".join(points)}" fill="none" '
            f'stroke="{CALLS_COLOUR}" stroke-width="2"/>'
        )
    legend = (
        f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="12" fill="{COST_COLOUR}">■ cost (left)'
        f'</text><text x="{LEFT + 140}" y="{HEIGHT - 6}" font-size="12" '
        f'fill="{CALLS_COLOUR}">— calls (right)</text>'
    )
    return _svg(
        "usage-chart",
        "Cost and calls per day",
        days,
        (max_cost, COST_COLOUR, usd),
        (max_calls, CALLS_COLOUR, _whole),
        marks,
        legend,
    )


def tokens_chart(days: Sequence[dict[str, Any]]) -> SafeString:
    """Input (prompt) and output (completion) tokens per day, stacked. ``days``: one dict per
    day with ``day``, ``prompt_tokens`` and ``completion_tokens``."""
    inputs = [int(day["prompt_tokens"]) for day in days]
    outputs = [int(day["completion_tokens"]) for day in days]
    maximum = _axis_maximum([i + o for i, o in zip(inputs, outputs, strict=True)], whole=True)
    slot = PLOT_W / max(len(days), 1)
    marks = []
    for index, day in enumerate(days):
        tip = escape(f"{day['day'].isoformat()}: {inputs[index]:,} in, {outputs[index]:,} out")
        middle = _y(inputs[index], maximum)
        top = _y(inputs[index] + outputs[index], maximum)
        marks.append(
            f"{_bar('input-bar', index, slot, TOP + PLOT_H, middle, INPUT_COLOUR)}"
            f"<title>{tip}</title></rect>"
            f"{_bar('output-bar', index, slot, middle, top, OUTPUT_COLOUR)}"
            f"<title>{tip}</title></rect>"
        )
    legend = (
        f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="12" fill="{INPUT_COLOUR}">■ input '
        f'tokens</text><text x="{LEFT + 140}" y="{HEIGHT - 6}" font-size="12" '
        f'fill="{OUTPUT_COLOUR}">■ output tokens</text>'
    )
    return _svg(
        "tokens-chart",
        "Tokens per day",
        days,
        (maximum, INPUT_COLOUR, _compact),
        None,
        marks,
        legend,
    )


def _compact(value: float) -> str:
    """An axis label of tokens: 950, 12k, 3.5M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:,.3g}{suffix}"
    return f"{value:,.0f}"
