"""The single writer: the bounded event queue, the engine that applies events and runs the
clocks, valuation of the book, evaluation into a ``RiskSnapshot``, counters and the recorder.

Only the engine task mutates state; everything above reads the snapshots it publishes.
"""
