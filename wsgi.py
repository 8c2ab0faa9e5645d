"""WSGI entry point: ``python -m waitress --listen=127.0.0.1:8000 wsgi:app``."""

from jarvis import create_app

app = create_app()
