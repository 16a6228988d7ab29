"""Who calls: tenant key authentication, its throttle, and the tenants' and keys' admin."""
