"""The supervisor: keeps N consumer processes alive, drains them, serves health and metrics.

Never imports the engine (no torch): it only spawns ``python -m funasr_fleet consume`` processes
and watches their heartbeat files and exit codes.
"""
