"""The history: sessions and their messages, versions, settings, search, import and export.

``Store`` (history.py) is the one object the rest of Jarvis holds, composed of
a piece per job: sessions.py (sessions and messages), tree.py (versions),
chat_settings.py, search.py, images.py (a prompt's images, stored once each),
transfer.py (import and export), writer.py (the answers' writes off their
path); dbcopy.py copies a whole database. The SQL
runs on an engine behind the interface of engines/__init__.py: SQLite or
PostgreSQL.

May import: the foundation (config, conversation, errors, log, status) and the
upstream's interface (``Options``). Nothing above: no lifecycle, web, dialects or cli.
"""

from .history import Store

__all__ = ["Store"]
