"""The history store: one object per database, composed of one piece per job.

The rest of Jarvis holds a ``Store`` and calls it by the names bound below,
each one piece's method; every piece reaches the database through the store's
``connect``, so what wraps that (a test, say) wraps them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .chat_settings import ChatSettings
from .engines import Connection, open_engine
from .images import Images
from .search import Search
from .sessions import Messages, Sessions
from .transfer import Imports
from .tree import Versions
from .writer import AnswerWriter


class Store:
    """Sessions and messages in a SQLite file or a PostgreSQL database (``database`` is a path or a URL).

    Every session call takes ``owner``: a user id, or None when no account exists.
    A session of another owner is reported exactly like an unknown one.
    """

    def __init__(
        self, database: str, *, pool_size: int = 8, timeout_s: float = 5.0, final_retry_s: float = 10.0
    ):
        self.engine = open_engine(database, pool_size=pool_size, timeout_s=timeout_s)
        self.final_retry_s = final_retry_s
        self.sessions = Sessions(self)
        self.messages = Messages(self)
        self.versions = Versions(self)
        self.chat_settings = ChatSettings(self)
        self.imports = Imports(self)
        self.images = Images(self)
        self.writer = AnswerWriter(self, final_retry_s)  # the answers' writes, off their path
        self.create_session = self.sessions.create
        self.list_sessions = self.sessions.list
        self.rename_session = self.sessions.rename
        self.get_session = self.sessions.get
        self.require_session = self.sessions.require
        self.delete_session = self.sessions.delete
        self.add_exchange = self.messages.add_exchange
        self.add_answer = self.messages.add_answer
        self.prompt_of = self.messages.prompt_of
        self.save_answer = self.messages.save_answer
        self.recover = self.messages.recover
        self.streaming_sessions = self.messages.streaming_sessions
        self.interrupt = self.messages.interrupt
        self.context = self.versions.context
        self.settings = self.chat_settings.get
        self.set_settings = self.chat_settings.set
        self.search = Search(self, self.engine).search
        self.import_session = self.imports.add
        self.image = self.images.get
        self.images_of = self.images.of_session

    def close(self) -> None:
        """Close the engine's long-lived connections (idempotent); writes still pending are named lost."""
        self.writer.close(0.0)
        self.engine.close()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection in the store's dialect (``jarvis.store.engines.Connection``)."""
        with self.engine.connect() as db:
            yield db

    def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be opened."""
        with self.connect() as db:
            db.begin()
            db.rollback()

    def show_version(self, session_id: str, message_id: int, owner: int | None = None) -> dict:
        """Show the versions through ``message_id``: the leaf becomes the newest one under it.

        Returns the session as ``get_session`` does; NotFound for a message of another session."""
        self.versions.show(session_id, message_id, owner)
        return self.get_session(session_id, owner)
