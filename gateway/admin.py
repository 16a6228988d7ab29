"""The admin site: Django imports this module; each subject registers its own pages."""

from __future__ import annotations

from django.contrib import admin

from gateway.tenants import admin as tenants_admin
from gateway.upstream_keys import admin as upstream_keys_admin
from gateway.usage import admin as usage_admin

admin.site.site_header = "Tollgate"
admin.site.site_title = "Tollgate admin"
# The navigation sidebar would take 300 px of a 1366 px screen from the ledger's and the keys'
# tables; the index (Home) lists the same pages.
admin.site.enable_nav_sidebar = False

__all__ = ["tenants_admin", "upstream_keys_admin", "usage_admin"]
