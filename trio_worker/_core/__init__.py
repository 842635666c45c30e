"""Foundations every program of trio-worker stands on, with no I/O of their own.

Errors, the API models and the one converter, the settings (the only reader of
the environment), job configurations and the template engine, exit reasons,
log formatting, the retry policy and the service loop. Nothing here imports
another subpackage of trio_worker.
"""
