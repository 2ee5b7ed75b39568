"""The HTTP server behind `python -m tasks.serve` (see README.md here): the request and response
schema (protocol.py), continuous batching (scheduler.py), the model and request checks (server.py)
and the routes (app.py, which needs Starlette: the [serve] extra)."""
