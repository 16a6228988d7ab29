"""The HTTP layer of ``/v1``: the routes, errors in each API's shape, the lean ASGI handler."""
