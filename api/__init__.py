"""The seesku HTTP service (FastAPI). Serving never imports torch."""
