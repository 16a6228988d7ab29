"""What a caller may do: allow-lists, rate limits and budgets, and the counters behind them."""
