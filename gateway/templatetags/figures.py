"""``{% load figures %}``: money, counts and changes as the admin writes them
(``gateway.usage.figures``): ``{{ cost|usd }}``, ``{{ tokens|count }}``,
``{{ calls|change:previous_calls }}``."""

from __future__ import annotations

from django import template

from gateway.usage import figures

register = template.Library()
register.filter("usd", figures.usd)
register.filter("count", figures.count)
register.filter("change", figures.change)
