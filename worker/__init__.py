"""ab-autopromote: promote A/B test winners with peeking-safe statistics, from PostgreSQL events."""

__version__ = "0.1.0"
