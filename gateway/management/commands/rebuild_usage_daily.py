"""``manage.py rebuild_usage_daily --start YYYY-MM-DD --end YYYY-MM-DD``: recompute the daily
rollup of those days (inclusive, UTC) from the ledger, in one transaction.

The ledger writer keeps the rollup current on its own; this is for repairs (a ledger row fixed by
hand, rows loaded in bulk outside the writer) and gives the same totals as the writer.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.usage.rollup import rebuild_rollup


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from None


class Command(BaseCommand):
    help = "Rebuild the daily usage rollup (UsageDaily) of a date range from the ledger."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", required=True, help="First day, YYYY-MM-DD (UTC).")
        parser.add_argument("--end", required=True, help="Last day, YYYY-MM-DD (UTC), included.")

    def handle(self, *args: Any, **options: Any) -> None:
        start, end = _day(options["start"]), _day(options["end"])
        if start > end:
            raise CommandError("--start is after --end")
        written = rebuild_rollup(start, end)
        self.stdout.write(f"rebuilt {start} to {end}: {written} rollup rows")
