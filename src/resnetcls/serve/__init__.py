"""The HTTP server: the FastAPI app, admission control, request/response shapes."""
