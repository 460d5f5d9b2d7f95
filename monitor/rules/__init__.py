"""Alert rules, pure: the state machine (``machine``: pending/for, hysteresis, cooldown,
severities), the built-in pack that reads figures off a snapshot (``pack``) and the
``[[rules]]``/``[limits]`` config it is built from (``config``). No I/O, no clock of its own.
"""
