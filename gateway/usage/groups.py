"""The "usage viewer" group: staff who may read usage reports and the ledger, and nothing else.

It is kept by a ``post_migrate`` handler rather than a data migration: the permissions it needs
exist only after ``migrate`` has created them (also ``post_migrate``), and a database flushed by
the test suite gets the group back at the next ``migrate`` or flush. Whatever an admin adds to the
group by hand stays; the handler only adds what is missing.
"""

from __future__ import annotations

from typing import Any

USAGE_VIEWER_GROUP = "usage viewer"
USAGE_VIEWER_PERMISSIONS = ("view_usagerecord", "view_usagedaily", "view_usage_report")
"""Codenames in the gateway app: the ledger, the rollup, the report page and its CSV."""


def ensure_usage_viewer_group(**kwargs: Any) -> None:
    """Create the group and give it its permissions (a ``post_migrate`` receiver)."""
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.get_or_create(name=USAGE_VIEWER_GROUP)
    permissions = Permission.objects.filter(
        content_type__app_label="gateway", codename__in=USAGE_VIEWER_PERMISSIONS
    )
    group.permissions.add(*permissions)
