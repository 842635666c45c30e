"""The engine: what runs inside a flow-run process the worker started.

It loads the deployment's entrypoint, proposes the run's states, ships its
logs and sends heartbeats. It imports the client and the foundations only.
"""
