"""Jarvis on PostgreSQL: the store's own tests again, the API's lifecycle, accounts, copy, and outages.

Each test gets a fresh database on one PostgreSQL server started for the run (tests/postgres.py);
they are skipped, saying why, where PostgreSQL or psycopg is missing.
"""

from __future__ import annotations

import inspect

import pytest

from tests import test_chats, test_settings, test_versions

pytestmark = pytest.mark.slow  # each test creates a database: a few hundred milliseconds


@pytest.fixture
def database(postgres_url) -> str:
    return postgres_url


def _engine_blind(test) -> bool:
    """A test that neither builds its own SQLite file nor looks inside SQLite's search index."""
    own_file = "tmp_path" in inspect.signature(test).parameters
    return not own_file and "messages_fts" not in inspect.getsource(test)


# the store's tests through the app, again on PostgreSQL
for _module in (test_chats, test_versions, test_settings):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and _engine_blind(_test):
            globals()[_name] = _test
