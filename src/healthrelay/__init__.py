"""HealthRelay (健康接力): runs a county medical community as one hospital."""

__version__ = "0.1.0"
