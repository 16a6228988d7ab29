"""The floor of the stack (issue #17): one async django-ninja view on Django's stock ASGI
application with no installed apps, no middleware and no database, returning pre-encoded bytes.
Stricter than ``bench/bare`` (which keeps the gateway's apps and middleware): nothing a Django +
ninja service could drop is left."""
