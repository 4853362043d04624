"""The HTTP inference service: :func:`create_app` (the FastAPI app, model loaded once) and
:func:`serve` (run it with uvicorn), behind ``stratad serve``. Importing it imports FastAPI (not torch:
the model is loaded by :func:`create_app`)."""

from __future__ import annotations

from stratad.serve.app import BackgroundServer, InferenceService, RefusedRequest, create_app, serve

__all__ = ["BackgroundServer", "InferenceService", "RefusedRequest", "create_app", "serve"]
