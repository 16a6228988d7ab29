"""One call from request to ledger row: the pipeline every endpoint shares, then one module per
inbound dialect (chat completions, Anthropic's messages, media)."""
