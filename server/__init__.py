"""loradock's gRPC inference server: one base model, many adapters per request.

Built in the server issue on top of `registry` (adapters resolve and pull from it).
"""
