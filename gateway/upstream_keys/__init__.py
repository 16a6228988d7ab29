"""The gateway's own keys to its upstreams: stored encrypted, rotated, checked, administered."""
