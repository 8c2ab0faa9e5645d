"""Jarvis's own HTTP side: the JSON and SSE API, the page, who may use Jarvis, the server."""
