from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from gateway.api import health
from gateway.api.routes import api
from gateway.routing import views as routing_views
from gateway.usage import views

urlpatterns = [
    # Before admin/: the admin's catch-all would answer these paths.
    path("admin/reports/usage/", views.usage_report, name="usage-report"),
    path("admin/reports/ledger.csv", views.ledger_csv, name="usage-ledger-csv"),
    path("admin/routing/health/", routing_views.health, name="upstream-health"),
    path("admin/", admin.site.urls),
    path(
        "", RedirectView.as_view(url="/admin/", permanent=False)
    ),  # the site has no page of its own
    path("v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
]

handler404 = "gateway.api.routes.not_found"
handler500 = "gateway.api.routes.server_error"
