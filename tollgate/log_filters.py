"""Logging filters named in ``settings.LOGGING``."""

from __future__ import annotations

import logging


class SkipApiResponses(logging.Filter):
    """Drop ``django.request``'s line for every 4xx/5xx response under ``/v1/``.

    Why: Django logs each such response ("Unauthorized: /v1/chat/completions", and a second
    traceback for a 500), so a flood of bad keys or an outage wrote a line or two per call. The
    API logs what it must itself: a summary of failed authentications per interval, outages
    once per interval, its own bugs with one traceback (``gateway.api.routes``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        path = getattr(request, "path", "")
        return not (isinstance(path, str) and path.startswith("/v1/"))
