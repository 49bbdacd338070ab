"""The self-service portal: server-rendered pages over the registry and the jobs, at `/ui` on the HTTP port.

`app.py` builds the portal as its own small FastAPI app (mounted by the HTTP front), `sessions.py` signs a user in
with a token (the same tokens and roles as gRPC and HTTP) and guards forms against cross-site requests, and
`templates/` and `static/` are its pages and style. Pages read through the one registry interface and change
nothing the CLI could not; read pages need no JavaScript.
"""
