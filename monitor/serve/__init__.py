"""Readers of snapshots: the Prometheus collector (``metrics``), the HTTP API (``http``) and
the terminal status table (``status``). They never mutate engine state.
"""
