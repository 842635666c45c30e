"""The API client: typed REST methods, retries, CSRF, TLS, websockets, log shipping.

Everything that speaks to a Prefect-compatible API over the network lives here;
the worker, the task worker and the engine all reach the API through it.
"""
