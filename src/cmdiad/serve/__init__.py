"""The scoring service: ``cmdiad serve MODEL`` (FastAPI + uvicorn; the ``deploy`` extra)."""
