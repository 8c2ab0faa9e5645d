"""Jarvis on PostgreSQL: the store's own tests again, the API's lifecycle, accounts, copy, and outages.

Each test gets a fresh database on one PostgreSQL server started for the run (tests/postgres.py);
they are skipped, saying why, where PostgreSQL or psycopg is missing.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import threading
import time

import pytest
import requests

from jarvis.conversation import Image
from jarvis.errors import DatabaseUnavailable, JarvisError
from tests import (
    test_api,
    test_chats,
    test_input,
    test_lifecycle,
    test_security,
    test_settings,
    test_soak,
    test_store_rich,
    test_versions,
)
from tests.conftest import HTTP_TIMEOUT, LOCAL_TOKEN, Api, clean_env, free_port, jarvis_command, wait_for
from tests.fake_ollama import Script
from tests.redis_server import REDIS_SERVER
from tests.test_security import accounts, bare  # noqa: F401  (fixtures of the tests run again)

try:
    from tests import test_scale
    from tests.test_scale import pair, redis_server, two_apps  # noqa: F401
except pytest.skip.Exception as e:  # no redis client
    test_scale, SCALE_MISSING = None, str(e)
else:
    SCALE_MISSING = None if REDIS_SERVER else "redis-server is not installed"

pytestmark = pytest.mark.slow  # each test creates a database: a few hundred milliseconds


@pytest.fixture
def database(postgres_url) -> str:
    return postgres_url


def _engine_blind(test) -> bool:
    """A test that neither builds its own SQLite file nor looks inside SQLite's search index."""
    own_file = "tmp_path" in inspect.signature(test).parameters
    return not own_file and "messages_fts" not in inspect.getsource(test)


# the store's tests through the app, again on PostgreSQL
for _module in (test_chats, test_versions, test_settings, test_store_rich):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and _engine_blind(_test):
            globals()[_name] = _test

# the lifecycle through the real app under waitress, and accounts and tokens, on PostgreSQL
_AGAIN = {
    test_lifecycle: (
        "test_normal_flow_streams_tokens_then_one_end",
        "test_second_prompt_supersedes_first",
        "test_stop_closes_upstream_and_ends_stream",
        "test_client_disconnect_cancels_upstream",
        "test_burst_of_simultaneous_prompts_never_overlaps_upstream",
    ),
    test_api: (
        "test_delete_stops_a_running_answer_and_forgets_the_session",
        "test_multi_turn_sends_earlier_messages",
        "test_an_answer_cut_by_a_token_limit_ends_as_length_and_stays_in_context",
    ),
    # PostgreSQL refuses a NUL in any text: each such request used to fail there as a 500
    test_input: (
        "test_a_nul_byte_in_any_text_answers_400",
        "test_a_nul_byte_in_a_sign_in_name_answers_400",
        "test_an_imported_title_and_model_lose_their_control_characters",
        "test_a_rename_loses_its_control_characters",
    ),
    test_security: (
        "test_the_local_token_means_nothing_once_an_account_exists",
        "test_first_account_adopts_the_sessions_made_before",
        "test_bearer_token_works_and_revoking_it_takes_effect_at_once",
        "test_sign_out_ends_a_copied_cookie",
        "test_a_new_password_or_removing_the_user_ends_every_cookie",
        "test_another_users_session_is_not_found_on_every_route",
        "test_stop_never_crosses_users",
        "test_revoking_a_token_or_removing_a_user_stops_their_live_answers",
    ),
}
# two processes (and two apps in one process) sharing one Redis and one PostgreSQL
_SEVERAL = (
    "test_prompt_at_b_supersedes_a_answer_at_a",
    "test_stop_at_b_ends_a_answer_and_closes_its_upstream",
    "test_delete_at_b_ends_a_answer",
    "test_prompts_alternating_between_processes_never_overlap_upstream",
    "test_dead_owner_lease_expires_and_the_next_prompt_proceeds",
    "test_a_prompt_in_one_app_supersedes_the_answer_in_the_other",
    "test_stop_in_one_app_reaches_the_answer_in_the_other",
    "test_prompts_sent_at_once_to_both_apps_leave_one_answer",
    "test_redis_down_refuses_new_prompts_at_once_while_a_live_answer_completes",
    "test_an_app_starting_spares_the_answer_another_app_streams",
    "test_an_account_stream_limit_counts_its_answers_in_every_app",
)
if SCALE_MISSING is None:
    _AGAIN[test_scale] = _SEVERAL
    _AGAIN[test_soak] = ("test_chaos_soak_across_two_processes",)
else:

    def test_several_processes_on_postgres():
        pytest.skip(SCALE_MISSING)


for _module, _names in _AGAIN.items():
    for _name in _names:
        globals()[_name] = getattr(_module, _name)


def test_secrets_are_stored_only_as_hashes_in_postgres(app):
    users = app.extensions["jarvis"].accounts
    users.add("ann", test_security.PASSWORD)
    token = users.create_token("ann")
    with app.extensions["jarvis"].store.connect() as db:
        rows = [*db.execute("SELECT * FROM users").fetchall(), *db.execute("SELECT * FROM tokens").fetchall()]
    stored = repr(rows)
    assert "ann" in stored and test_security.PASSWORD not in stored and token not in stored


def _send(served, session: str, content: str) -> requests.Response:
    return requests.post(
        f"{served.url}/api/sessions/{session}/messages",
        json={"content": content},
        headers={"Authorization": f"Bearer {LOCAL_TOKEN}"},
        timeout=HTTP_TIMEOUT,
    )


def test_postgres_stopped_mid_answer_refuses_new_prompts_and_stores_the_answer_once_back(
    own_postgres, make_app, make_server, fake, caplog
):
    # without the down-state, a new prompt would wait the pool's timeout (5 s), and without the
    # background retry the answer's final write would be lost
    app = make_app(database=own_postgres.url(), database_retry_s=20.0, flush_interval_s=0.1)
    live = make_server(app)
    api = Api(live.url)
    fake.push(Script(tokens=60, interval_s=0.02))
    sid, other = api.session(), api.session()
    sse = api.send(sid, "long")
    sse.until("token")
    own_postgres.stop("fast")
    started = time.monotonic()
    refused = _send(live, other, "while the database is down")
    took = time.monotonic() - started
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"
    assert refused.headers["Retry-After"] and took < 1.0, took
    for _ in range(10):  # more than the pool holds: none waits for a connection
        again = time.monotonic()
        assert _send(live, other, "again").status_code == 503 and time.monotonic() - again < 0.5
    call = fake.wait_for_calls(1)[0]
    assert call.wait_closed(10)  # the answer streamed to its end with the database down
    assert any(r.getMessage().startswith("checkpoint failed") for r in caplog.records)  # logged, not fatal
    assert sse.end() == {"status": "completed"}  # at once: the final write is retried in the background
    own_postgres.start()

    def stored():
        r = requests.get(f"{live.url}/api/sessions/{sid}", headers=api.headers, timeout=HTTP_TIMEOUT)
        return r.ok and r.json()["messages"][-1]["status"] != "streaming" and r.json()["messages"][-1]

    answer = wait_for(stored, timeout=15, interval=0.05, what="the final write once the database is back")
    assert answer["status"] == "completed" and answer["content"] == sse.text() and len(sse.text()) > 0
    assert api.send(other, "after the restart").end() == {"status": "completed"}  # writes resume


def test_an_answer_whose_final_write_cannot_be_stored_is_logged_as_lost(
    own_postgres, make_app, make_server, fake, caplog
):
    app = make_app(database=own_postgres.url(), database_retry_s=0.5)
    api = Api(make_server(app).url)
    fake.push(Script(tokens=20, interval_s=0.02))
    sid, sse = api.answering("long")
    own_postgres.stop("fast")
    assert sse.end() == {"status": "completed"}  # at once: the write is retried in the background
    # the retry is bounded: it gives up after JARVIS_DATABASE_RETRY, loudly
    lost = wait_for(lambda: [r for r in caplog.records if r.getMessage() == "answer_lost"], what="the loss")
    assert lost[0].levelno == logging.CRITICAL


def _fill(store, users) -> list[str]:
    """A history with what a copy must keep: accounts, a token, versions, settings, statuses, meta,
    an image."""
    ann = users.add("ann", test_security.PASSWORD)
    sid = store.create_session(ann.id)["id"]
    _, first = store.add_exchange(sid, "first question", "t" * 16, "tiny")
    store.save_answer(first, "first answer", "completed", meta={"usage": {"output_tokens": 2}})
    again = store.add_answer(sid, store.prompt_of(sid, first), "u" * 16, "tiny")
    store.save_answer(again, "cut short", "stopped", meta={"reason": "stopped"})
    store.show_version(sid, first, ann.id)  # the leaf is the first version again
    store.set_settings(sid, {"temperature": 0.5}, ann.id)
    other = store.create_session(ann.id, title="a picture")["id"]
    picture = {
        "role": "user",
        "content": "what is this?",
        "images": [Image("image/png", test_store_rich.PNG)],
    }
    _, answer = store.add_exchange(other, picture, "w" * 16, "tiny")
    store.save_answer(answer, "a cat", "completed")
    return [sid, other]


def _jarvis(*args: str, database: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        jarvis_command(*args),
        env=clean_env(JARVIS_DATABASE=database),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_copy_moves_a_sqlite_history_to_postgres_and_back(make_app, tmp_path, postgres_url):
    old = make_app(database=str(tmp_path / "old.sqlite3")).extensions["jarvis"]
    sids = _fill(old.store, old.accounts)
    token = old.accounts.create_token("ann", "ci")
    ann = old.accounts.authenticate("ann", test_security.PASSWORD)

    done = _jarvis("db", "copy", "--to", postgres_url, database=str(tmp_path / "old.sqlite3"))
    assert done.returncode == 0, done.stderr
    assert "copied 1 users, 1 tokens, 2 sessions, 5 messages, 1 images, 1 message_images" in done.stdout

    new = make_app(database=postgres_url).extensions["jarvis"]
    for sid in sids:
        assert new.store.get_session(sid, ann.id) == old.store.get_session(sid, ann.id)
    assert new.store.settings(sids[0], ann.id) == {"temperature": 0.5}
    assert new.accounts.authenticate("ann", test_security.PASSWORD) == ann
    assert new.store.image(Image("image/png", test_store_rich.PNG).digest, ann.id).data == test_store_rich.PNG
    assert new.accounts.user_for_token(token)[0] == ann
    user, answer = new.store.add_exchange(sids[0], "a new question", "v" * 16, "tiny")  # no id collides
    assert user > 5 and answer == user + 1
    new.store.save_answer(answer, "a new answer", "completed")

    refused = _jarvis("db", "copy", "--to", postgres_url, database=str(tmp_path / "old.sqlite3"))
    assert refused.returncode == 1 and "already holds" in refused.stderr

    back = str(tmp_path / "back.sqlite3")
    done = _jarvis(
        "db", "copy", "--from", postgres_url, "--to", back, database=str(tmp_path / "unused.sqlite3")
    )
    assert done.returncode == 0 and "2 sessions, 7 messages, 1 images" in done.stdout, done.stderr
    restored = make_app(database=back).extensions["jarvis"].store
    assert restored.get_session(sids[0], ann.id) == new.store.get_session(sids[0], ann.id)
    assert restored.image(Image("image/png", test_store_rich.PNG).digest, ann.id).data == test_store_rich.PNG

    done = _jarvis("db", "copy", "--to", postgres_url, "--replace", database=str(tmp_path / "old.sqlite3"))
    assert done.returncode == 0 and "5 messages, 1 images" in done.stdout, done.stderr
    assert new.store.get_session(sids[0], ann.id) == old.store.get_session(sids[0], ann.id)


def test_jarvis_check_opens_a_postgres_database_and_hides_its_password(postgres_url):
    url = postgres_url.replace("postgres@", "postgres:not-checked@")  # trust: the password is ignored
    out = _jarvis("check", database=url).stdout
    assert f"ok   database {url.replace(':not-checked@', ':***@')} is writable" in out
    assert "not-checked" not in out


def test_two_apps_on_one_database_share_accounts_tokens_and_sessions(make_app):
    one, two = (make_app().extensions["jarvis"] for _ in range(2))
    one.accounts.add("ann", test_security.PASSWORD)
    token = one.accounts.create_token("ann")
    ann, _ = two.accounts.user_for_token(token)
    assert ann is not None and ann.name == "ann"
    sid = two.store.create_session(ann.id)["id"]
    one.store.add_exchange(sid, "hello from one", "t" * 16, "tiny")
    assert [s["id"] for s in one.store.list_sessions(ann.id)] == [sid]
    assert two.store.get_session(sid, ann.id)["title"] == "hello from one"
    two.accounts.revoke(two.accounts.tokens()[0]["id"])
    assert one.accounts.user_for_token(token) == (None, None)


def test_serve_with_postgres_unreachable_exits_saying_so_without_the_password(tmp_path):
    url = f"postgresql://jarvis:hidden@127.0.0.1:{free_port()}/jarvis"  # nothing listens there
    env = clean_env(JARVIS_DATABASE=url, JARVIS_DATABASE_TIMEOUT="1", JARVIS_INSTANCE_DIR=str(tmp_path / "i"))
    started = time.monotonic()
    # would hang without the pool's timeout: the pool retries a refused server for minutes
    serve = jarvis_command("serve", "--port", str(free_port()))
    done = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and time.monotonic() - started < 15
    assert "jarvis:***@127.0.0.1" in done.stderr and "hidden" not in done.stderr


def test_a_busy_pool_answers_503_without_counting_the_database_down(postgres_url):
    from jarvis.store.engines.postgres import PostgresEngine  # psycopg is there: the fixture checked

    engine = PostgresEngine(postgres_url, pool_size=1, timeout_s=0.2)
    try:
        with engine.connect():  # the one connection, held
            with pytest.raises(DatabaseUnavailable, match="busy"):
                with engine.connect():
                    pass
        with engine.connect() as db:  # at once: the database was never down
            assert db.execute("SELECT 1 AS one").fetchone()["one"] == 1
    finally:
        engine.close()


def test_processes_starting_at_once_create_the_schema_once(postgres_url):
    # without the advisory lock, CREATE TABLE IF NOT EXISTS run at once by several sessions
    # fails in all but one with a unique violation in PostgreSQL's catalog
    from jarvis.store.engines.postgres import PostgresEngine

    starters = 6
    gate = threading.Barrier(starters, timeout=10)
    engines, errors = [], []

    def start():
        gate.wait()
        try:
            engines.append(PostgresEngine(postgres_url, pool_size=1))
        except JarvisError as e:  # a StoreError: fails the test below, with its text
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for engine in engines:
        engine.close()
    assert errors == [] and len(engines) == starters


def test_prompts_stored_at_once_in_one_chat_form_one_line(app):
    # without the write lock two prompts read the same leaf and fork the chat
    store = app.extensions["jarvis"].store
    sid = store.create_session()["id"]
    writers = 8
    gate = threading.Barrier(writers, timeout=10)

    def write(i: int):
        gate.wait()
        store.add_exchange(sid, f"prompt {i}", f"{i:016d}", "tiny")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with store.connect() as db:
        prompts = db.execute("SELECT parent_id FROM messages WHERE role = 'user'").fetchall()
    parents = [p["parent_id"] for p in prompts]
    assert len(parents) == writers and len(set(parents)) == writers  # each follows a different answer
    assert len(store.get_session(sid)["messages"]) == 2 * writers


def test_user_and_token_commands_on_postgres(postgres_url):
    added = subprocess.run(
        jarvis_command("user", "add", "ann"), env=clean_env(JARVIS_DATABASE=postgres_url),
        input=test_security.PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    created = _jarvis("token", "create", "--user", "ann", "--name", "ci", database=postgres_url)
    assert created.returncode == 0 and created.stdout.strip().startswith("jv_")
    assert _jarvis("user", "list", database=postgres_url).stdout == "ann\t1 token(s)\n"
    assert "\tann\tci" in _jarvis("token", "list", database=postgres_url).stdout
