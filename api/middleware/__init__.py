"""Plain ASGI middleware that every request passes: request logs, metrics, security headers, timeouts."""
