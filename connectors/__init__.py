"""Async producers of normalized events (see ``connectors.base``)."""
