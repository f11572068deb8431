"""Bar charts as geometry for server-rendered SVG (ui/templates/_chart.html draws them)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from infer.web.templates import money

# Room for the value axis on the left and the labels underneath.
_LEFT, _BOTTOM, _TOP = 56.0, 22.0, 8.0


@dataclass(frozen=True)
class Point:
    label: str  # under the bar (may be shown only for some bars)
    value: float
    shown: str  # the value as a person reads it, for the bar's tooltip


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    bars: list[Bar]
    ticks: list[Mark]  # value axis: the text and the grid line's height
    labels: list[Mark]  # under the bars
    summary: str  # what a screen reader says instead
    empty: bool


def _nice_top(peak: float) -> float:
    """The axis top: 1, 2, 2.5 or 5 times a power of ten, at or above the peak."""
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    return float(next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= peak))


def bar_chart(
    points: Sequence[Point],
    *,
    axis: Callable[[float], str] = lambda v: f"{v:g}",
    summary: str = "",
    width: float = 720,
    height: float = 180,
    labels_every: int | None = None,
) -> Chart:
    """Bars of these points, scaled to the largest, with three value ticks."""
    top = _nice_top(max((p.value for p in points), default=0.0))
    plot_w, plot_h = width - _LEFT, height - _BOTTOM - _TOP
    slot = plot_w / max(len(points), 1)
    gap = min(slot * 0.2, 6.0)
    every = labels_every or max(1, math.ceil(len(points) / 8))
    bars, labels = [], []
    for index, point in enumerate(points):
        h = plot_h * max(point.value, 0.0) / top
        x = _LEFT + index * slot
        bars.append(
            Bar(x + gap / 2, _TOP + plot_h - h, slot - gap, h, f"{point.label}: {point.shown}")
        )
        if index % every == 0:
            labels.append(Mark(x + slot / 2, height - 6, point.label))
    ticks = [Mark(_LEFT - 6, _TOP + plot_h * (1 - f), axis(top * f)) for f in (0.0, 0.5, 1.0)]
    return Chart(
        width=width,
        height=height,
        bars=bars,
        ticks=ticks,
        labels=labels,
        summary=summary,
        empty=not any(p.value > 0 for p in points),
    )


def daily(
    buckets: Sequence[Mapping[str, Any]],
    *,
    value: Callable[[Mapping[str, Any]], float],
    shown: Callable[[Mapping[str, Any]], str],
    end: date,
    days: int,
    zero: str,
) -> list[Point]:
    """One point per UTC day up to `end` (inclusive); days without a bucket are zero.

    buckets: the API's `byDay` lists, whose `key` is the day as YYYY-MM-DD.
    """
    found = {bucket["key"]: bucket for bucket in buckets}
    points = []
    for offset in range(days - 1, -1, -1):
        day = end - timedelta(days=offset)
        bucket = found.get(day.isoformat())
        label = day.strftime("%b %d")
        if bucket is None:
            points.append(Point(label, 0.0, zero))
        else:
            points.append(Point(label, value(bucket), shown(bucket)))
    return points


def money_per_day(
    buckets: Sequence[Mapping[str, Any]],
    *,
    amount: str,
    requests: str,
    start: date,
    end: date,
    summary: str,
) -> Chart:
    """A bar per UTC day from `start` to `end` of an amount in the API's `byDay` buckets.

    amount, requests: the bucket's fields with the money and the request count.
    """
    points = daily(
        buckets,
        value=lambda b: float(Decimal(str(b[amount]))),
        shown=lambda b: f"{money(str(b[amount]))} · {b[requests]} requests",
        end=end,
        days=(end - start).days + 1,
        zero="$0.00",
    )
    return bar_chart(points, axis=lambda v: money(f"{v:.6f}"), summary=summary)
