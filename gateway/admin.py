"""The admin site: Django imports this module; each subject registers its own pages."""

from __future__ import annotations

from django.contrib import admin

from gateway.tenants import admin as tenants_admin
from gateway.upstream_keys import admin as upstream_keys_admin
from gateway.usage import admin as usage_admin

admin.site.site_header = "Tollgate"
admin.site.site_title = "Tollgate admin"

__all__ = ["tenants_admin", "upstream_keys_admin", "usage_admin"]
