"""Protocol servers that map the outside world into ASGI scopes and events."""
