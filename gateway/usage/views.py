"""The usage report in the admin (``/admin/reports/usage/``) and its CSV exports.

Staff with ``gateway.view_usage_report`` (superusers, the "usage viewer" group) see it; other
staff get 403, anonymous visitors the admin login. ``?format=csv`` streams the filtered rollup;
``/admin/reports/ledger.csv`` streams the matching ledger rows. The chart is an SVG drawn here
(``chart``): no JavaScript, nothing fetched from elsewhere.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse

from gateway.models import ApiKey, Tenant, UsageRecord
from gateway.usage import reports
from gateway.usage.chart import daily_chart, tokens_chart
from gateway.usage.reports import ReportFilter
from gateway.usage.rollup import days_of_ledger

PERMISSION = "gateway.view_usage_report"


class KeyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.prefix}… {obj.tenant.name}{' / ' + obj.name if obj.name else ''}"


class ReportForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    tenant = forms.ModelChoiceField(Tenant.objects.all(), required=False, empty_label="all")
    key = KeyChoiceField(
        ApiKey.objects.select_related("tenant").order_by("tenant__name", "prefix"),
        required=False,
        empty_label="all",
    )
    model = forms.ChoiceField(required=False)
    provider = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Models and providers to choose from: those the rollup has seen."""
        super().__init__(*args, **kwargs)
        for name in ("model", "provider"):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            values = [value for value in reports.rollup_values(name) if value]
            field.choices = [("", "all"), *((value, value) for value in values)]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "start" not in data or "end" not in data:
            return data  # a field error is shown
        if data["start"] > data["end"]:
            raise forms.ValidationError("The start date is after the end date.")
        if (data["end"] - data["start"]).days >= reports.MAX_DAYS:
            raise forms.ValidationError(f"A report covers at most {reports.MAX_DAYS} days.")
        return data

    def report(self) -> ReportFilter:
        data = self.cleaned_data
        return ReportFilter(
            start=data["start"],
            end=data["end"],
            tenant_id=data["tenant"].pk if data.get("tenant") else None,
            api_key_id=data["key"].pk if data.get("key") else None,
            model=data.get("model") or "",
            provider=data.get("provider") or "",
        )


def _check_permission(request: HttpRequest) -> None:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied


def _bound_form(request: HttpRequest) -> ReportForm:
    """The form bound to the query string, the default range (this month) filled in."""
    data = {k: v for k, v in request.GET.items() if k in ReportForm.base_fields}
    first, last = reports.this_month()
    data["start"] = data.get("start") or first.isoformat()
    data["end"] = data.get("end") or last.isoformat()
    return ReportForm(data)


# --- links ----------------------------------------------------------------------------------------


def ledger_url(report: ReportFilter) -> str:
    """The ledger changelist filtered like ``report`` (the parameters its filters use)."""
    params: dict[str, Any] = {
        **{name: str(at) for name, at in days_of_ledger(report.start, report.end).items()},
        **report.chosen("tenant__id__exact", "api_key__id__exact", "requested_model", "provider"),
    }
    return reverse("admin:gateway_usagerecord_changelist") + "?" + urlencode(params)


def report_query(report: ReportFilter, **extra: str) -> str:
    """The query string of the report page (or its CSV) for ``report``."""
    params: dict[str, Any] = {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        **report.chosen("tenant", "key", "model", "provider"),
    }
    return "?" + urlencode({**params, **extra})


# --- CSV ------------------------------------------------------------------------------------------


class _Echo:
    """A file-like object whose ``write`` returns what it is given: ``csv.writer`` then yields
    each formatted line instead of buffering the file."""

    def write(self, value: str) -> str:
        return value


def _stream_csv(filename: str, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Any:
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


LEDGER_CSV_COLUMNS = (
    "created_at",
    "request_id",
    "tenant__name",
    "api_key__prefix",
    "endpoint",
    "requested_model",
    "provider",
    "upstream_model",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "image_count",
    "input_characters",
    "audio_seconds",
    "usage_estimated",
    "cost_usd",
    "status_code",
    "error_type",
    "latency_ms",
    "error_message",
)


def ledger_rows(report: ReportFilter) -> Iterator[tuple[Any, ...]]:
    """The ledger rows matching ``report``, oldest first, fetched in chunks."""
    rows = UsageRecord.objects.filter(
        **days_of_ledger(report.start, report.end),
        **report.chosen("tenant_id", "api_key_id", "requested_model", "provider"),
    )
    values = rows.order_by("created_at", "id").values_list(*LEDGER_CSV_COLUMNS)
    return values.iterator(chunk_size=2000)


# --- views ----------------------------------------------------------------------------------------


def _usage_report(request: HttpRequest) -> HttpResponseBase:
    _check_permission(request)
    form = _bound_form(request)
    if not form.is_valid():
        if request.GET.get("format") == "csv":
            return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain")
        context = {**admin.site.each_context(request), "title": "Usage report", "form": form}
        return render(request, "admin/reports/usage.html", context, status=400)
    report = form.report()
    span = f"{report.start.isoformat()}_{report.end.isoformat()}"
    if request.GET.get("format") == "csv":
        return _stream_csv(f"usage_{span}.csv", reports.CSV_COLUMNS, reports.csv_rows(report))
    days = reports.per_day(report)
    for row in days:
        one_day = report.narrowed(start=row["day"], end=row["day"])
        row["report_url"] = report_query(one_day)
        row["ledger_url"] = ledger_url(one_day)
    tenants = reports.by_tenant(report)
    for row in tenants:
        row["report_url"] = report_query(report.narrowed(tenant_id=row["tenant_id"]))
        row["ledger_url"] = ledger_url(report.narrowed(tenant_id=row["tenant_id"]))
    models = reports.by_model(report)
    for row in models:
        row["report_url"] = report_query(report.narrowed(model=row["model"]))
        row["ledger_url"] = ledger_url(report.narrowed(model=row["model"]))
    previous = report.previous()
    keys = reports.by_key(report)[:50]
    for row in keys:
        row["report_url"] = report_query(report.narrowed(api_key_id=row["api_key_id"]))
        row["ledger_url"] = ledger_url(report.narrowed(api_key_id=row["api_key_id"]))
    context = {
        **admin.site.each_context(request),
        "title": "Usage report",
        "form": form,
        "report": report,
        "totals": reports.totals(report),
        "previous": previous,
        "previous_totals": reports.totals(previous),
        "previous_url": report_query(previous),
        "chart": daily_chart(days),
        "tokens_chart": tokens_chart(days),
        "days": days,
        "tenants": tenants,
        "models": models,
        "keys": keys,
        "csv_url": report_query(report, format="csv"),
        "ledger_url": ledger_url(report),
        "ledger_csv_url": reverse("usage-ledger-csv") + report_query(report),
    }
    return render(request, "admin/reports/usage.html", context)


def _ledger_csv(request: HttpRequest) -> HttpResponseBase:
    _check_permission(request)
    form = _bound_form(request)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain")
    report = form.report()
    span = f"{report.start.isoformat()}_{report.end.isoformat()}"
    header = [column.replace("__", "_") for column in LEDGER_CSV_COLUMNS]
    return _stream_csv(f"ledger_{span}.csv", header, ledger_rows(report))


usage_report = admin.site.admin_view(_usage_report)
ledger_csv = admin.site.admin_view(_ledger_csv)
