"""Interoperability matrix: tornado_websocket against other WebSocket implementations."""
