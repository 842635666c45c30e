"""The built-in ``process`` backend: each flow run as a local process group.

Its configuration, process-group helpers, the on-disk record of started
processes, reconciliation after a restart, the memory ceiling and the
warm-start zygote.
"""
