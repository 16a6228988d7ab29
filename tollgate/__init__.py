"""The Django project: settings, URLs and the ASGI application. The app code is in ``gateway``."""
