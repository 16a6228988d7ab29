from __future__ import annotations

from django.contrib import admin
from django.urls import path

from gateway.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", api.urls),
]

handler404 = "gateway.api.not_found"
handler500 = "gateway.api.server_error"
