"""The shared vocabulary: what every part of riskmon reads and writes.

Normalized events (``events``), the instrument registry (``instruments``), the immutable
``RiskSnapshot`` (``snapshot``), alerts and their transitions (``alert``), connector health
(``health``), the retry policy (``backoff``) and the config vocabulary (``settings``).
Imports only ``monitor.quant`` (the snapshot carries its result types); no I/O.
"""
