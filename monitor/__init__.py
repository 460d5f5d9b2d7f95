"""riskmon: a streaming real-time risk monitor for crypto portfolios."""

__version__ = "0.1.0"
