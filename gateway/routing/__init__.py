"""Which upstream serves a call: deployments, retries, fallbacks, and the health of each
deployment and upstream key (circuit breakers), shared through Redis when it is configured."""
