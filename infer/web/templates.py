"""The dashboard's Jinja2 templates (ui/templates): escaped always, with INFER's filters."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from jinja2_fragments import render_block

# Installed, ui/ ships inside the package (setup.py); in a checkout it is the top-level
# folder beside infer/ (as for migrations/).
_PACKAGE = Path(__file__).resolve().parent.parent
UI_DIR = _PACKAGE / "ui" if (_PACKAGE / "ui").is_dir() else _PACKAGE.parent / "ui"
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"


def money(value: str | None) -> str:
    """ "12.5" → "$12.50"; small amounts keep their micro-dollars: "0.000123" → "$0.000123"."""
    if value is None:
        return "—"
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return str(value)
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    text = f"{amount:,.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{sign}${whole}.{cents.ljust(2, '0')}"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: str | None) -> str:
    """An API timestamp as "2026-12-07 14:03 UTC"."""
    moment = parse_time(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def _span(seconds: float) -> str:
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
    return f"{int(seconds)} s"


def ago(value: str | None, now: datetime | None = None) -> str:
    """An API timestamp as "just now", "5 min ago", "2 days ago", or "in 3 h"."""
    moment = parse_time(value)
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return "just now" if seconds < 60 else f"{_span(seconds)} ago"


def number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def count(value: int | None, noun: str, plural: str | None = None) -> str:
    """1 → "1 request", 1200 → "1,200 requests"."""
    amount = value or 0
    return f"{amount:,} {noun if amount == 1 else plural or noun + 's'}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def milliseconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


class Templates:
    """Renders a whole page, or one named block of it for htmx (jinja2-fragments)."""

    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self.env = Environment(
            loader=FileSystemLoader(directory),
            autoescape=True,  # every template, whatever its name: nothing shown unescaped
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            money=money,
            when=when,
            ago=ago,
            number=number,
            count=count,
            percent=percent,
            ms=milliseconds,
        )
        # Each _name.html holds macros, reachable everywhere as `name` (forms.field(…)):
        # an {% import %} would not reach blocks rendered on their own for htmx.
        for path in sorted(directory.glob("_*.html")):
            self.env.globals[path.stem[1:]] = self.env.get_template(path.name).module

    def page(self, name: str, globals_: dict[str, Any], context: dict[str, Any]) -> str:
        return self.env.get_template(name).render({**globals_, **context})

    def block(
        self, name: str, block: str, globals_: dict[str, Any], context: dict[str, Any]
    ) -> str:
        return render_block(self.env, name, block, {**globals_, **context})
