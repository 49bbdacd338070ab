"""The OpenAI-compatible HTTP API of `reg serve` (`--http-port`), a thin front over the same InferenceService as gRPC.

`protocol.py` the wire schema; `serving_completions.py` and `serving_adapters.py` the handlers; `app.py` the
routes and auth; `body.py` bounded body reading; `errors.py` OpenAI error bodies from the one error table;
`front.py` uvicorn on its own thread. Imported only when HTTP is on (FastAPI and uvicorn load then).
"""
