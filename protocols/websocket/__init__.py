"""HTTP and WebSocket, served by daphne on the gateway's own event loop."""
