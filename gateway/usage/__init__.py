"""What calls cost: the ledger writer, the daily rollup, and the reports and admin over them."""
