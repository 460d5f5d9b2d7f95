"""The pure numerical core: Black-76 Greeks, implied vol, the EWMA estimator, risk
(contributions, VaR/ES, revaluation), portfolio margin and regime figures.

numpy and scipy only: no clock, no I/O, no logging, nothing of riskmon's own above it.
Vectorised over instruments, positions and scenarios; units and shapes in each docstring.
"""
