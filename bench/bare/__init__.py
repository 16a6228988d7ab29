"""A bare django-ninja endpoint: the stock-Django baseline the gateway is compared with."""
