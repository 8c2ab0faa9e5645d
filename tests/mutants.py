"""Reintroduce each lifecycle defect in a copy of HEAD and run the tests that must catch it.

``python -m tests.mutants [name-prefix ...]`` prints, per mutant, the tests that failed; a
mutant with none survived. Each mutant is (name, file(s), text, replacement, test files);
the text must occur exactly once. docs/testing.md records the last run.
"""

# ruff: noqa: E501  (the table holds lines of code as they are)
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MUTANTS = [
 ("waiting-cancel: the wait for the predecessor ignores the waiting stream's cancel", "jarvis/stream.py",
  "undo = [prev.released.then(gate.set), s.scope.on_cancel(gate.set)]", "undo = [prev.released.then(gate.set)]",
  ["tests/test_core.py"]),
 ("waiting-handoff: a stream cancelled while waiting frees its successor at once (no inherited wait)", "jarvis/stream.py",
  "            else:\n                self._chain(self._prev)\n", "            else:\n                self.released.set()\n",
  ["tests/test_core.py", "tests/test_lifecycle.py", "tests/test_registry_model.py"]),
 ("watcher: the disconnect watcher polls on after shutdown", "jarvis/registry.py",
  "if not watched or self._closed:", "if not watched:", ["tests/test_core.py"]),
 ("daemon: workers are not daemons", "jarvis/stream.py",
  "daemon=True)", "daemon=False)", ["tests/test_ops.py"]),
 ("store-first: register (and cancel the old answer) before the prompt is stored", "jarvis/api.py",
  "    stream.user_message_id, stream.message_id = store_rows(trace_id)\n    j.registry.hand_over(stream)  # supersedes the session's stream; 503 when full\n",
  "    prev = j.registry.register(stream)\n    stream.user_message_id, stream.message_id = store_rows(trace_id)\n    stream.start(prev)\n",
  ["tests/test_api.py"]),
 ("failed-start: a failed start leaves the stream registered", "jarvis/registry.py",
  '            stream.fail(JarvisError(f"internal error: {type(e).__name__}"))\n            raise', "            raise",
  ["tests/test_api.py"]),
 ("close-wait: the model's close waits 2 s for a stuck holder, outside the deadline", "jarvis/upstream/local.py",
  "        if self._slot.close():\n            self._model.free()\n", "        if self._slot.close():\n            self._model.free()\n        else:\n            threading.Event().wait(2.0)\n",
  ["tests/test_ops.py"]),
 ("last-take: the body's last take comes after the detach (a detached worker's late write is read)", "jarvis/stream.py",
  "            out = self._convert(worker.handoff.take())\n            if detached:\n                log.event(\"worker_detached\", logging.WARNING, trace_id=s.trace_id, session=s.session_id)\n",
  "            if detached:\n                log.event(\"worker_detached\", logging.WARNING, trace_id=s.trace_id, session=s.session_id)\n            out = self._convert(worker.handoff.take())\n",
  ["tests/test_core.py"]),
 ("abort-deadline: the abort callback ignores the deadlines", "jarvis/upstream/local.py",
  "return self._slot.abort or time.monotonic() > self._deadline.at", "return self._slot.abort", ["tests/test_local.py"]),
 ("load-deadline: loading the model and fitting the prompt do not count against the first-token deadline",
  ["jarvis/upstream/local.py", "jarvis/upstream/local.py"],
  ["        self._deadline.check()  # a load cannot be aborted: it counts once it returns\n",
   "        tokens, trim = _fit(llama, self._model.template, messages, self.n_ctx)\n        self._deadline.check()\n"],
  ["", "        tokens, trim = _fit(llama, self._model.template, messages, self.n_ctx)\n"], ["tests/test_local.py"]),
 ("probe: the disconnect probe only under jarvis serve (not under python -m waitress)", "jarvis/api.py",
  'client_gone=request.environ.get("waitress.client_disconnected"),', "client_gone=None,", ["tests/test_lifecycle.py"]),
 ("follow-up: no follow-up heartbeat", "jarvis/stream.py",
  "follow_ups = (follow_ups + 1) % 3", "follow_ups = 0", ["tests/test_lifecycle.py"]),
 ("checkpoints: both 'superseded before it began' checks removed", ["jarvis/stream.py", "jarvis/upstream/ollama.py"],
  ["if s.scope.cancelled:  # checkpoint: superseded before it began", "if cancel.cancelled:  # checkpoint: superseded or stopped before the call"],
  ["if False:  # checkpoint: superseded before it began", "if False:  # checkpoint: superseded or stopped before the call"],
  ["tests/test_core.py", "tests/test_lifecycle.py", "tests/test_api.py"]),
 ("supersede: supersede stops cancelling the old stream", "jarvis/registry.py",
  '            prev.cancel("superseded")\n', "            pass\n", ["tests/test_registry_model.py"]),
 ("socket-close: cancel stops closing the upstream socket", "jarvis/upstream/http.py",
  "    try:\n        sock.shutdown(socket.SHUT_RDWR)\n", "    return\n    try:\n        sock.shutdown(socket.SHUT_RDWR)\n",
  ["tests/test_lifecycle.py", "tests/test_api.py"]),
 ("predecessor-wait: the worker no longer waits for its predecessor", "jarvis/stream.py",
  "                self._wait_for(self._prev)\n", "                pass\n", ["tests/test_core.py", "tests/test_lifecycle.py"]),
 ("grace-expiry: a detached answer's grace never runs out", "jarvis/stream.py",
  "            if left <= 0:\n", "            if False:\n", ["tests/test_rejoin.py"]),
 ("takeover: a reader attaching to a detached answer only watches it", "jarvis/stream.py",
  "            if self.holder is None:\n                self._hold(tap)\n", "            if False:\n                self._hold(tap)\n",
  ["tests/test_rejoin.py"]),
 ("watcher-leave: a watcher's leaving counts as the holder's", "jarvis/stream.py",
  "            if tap in self._watchers:\n                self._watchers.remove(tap)\n                return\n",
  "            if tap in self._watchers:\n                self._watchers.remove(tap)\n                tap = self.holder\n",
  ["tests/test_rejoin.py"]),
 ("replay: an attach starts at the live events, not at the answer's start", "jarvis/stream.py",
  "            cursor = min(int(n), len(self._log)) if trace == self.trace_id and n.isdigit() else 0\n",
  "            cursor = min(int(n), len(self._log)) if trace == self.trace_id and n.isdigit() else len(self._log)\n",
  ["tests/test_rejoin.py"]),
 ("lease-wait: the worker calls the model without the session's lease", "jarvis/stream.py",
  "            if lease is not None and not lease.acquire(s.scope, s.config.supersede_timeout_s):\n",
  "            if False:\n", ["tests/test_scale.py"]),
 ("recovery-spare: a starting process marks every streaming answer, live elsewhere or not", "jarvis/__init__.py",
  "            spared = coord.held(sessions)\n", "            spared = set()\n", ["tests/test_scale.py"]),
 ("user-slots: an account's streams are counted in each process alone", "jarvis/registry.py",
  "            if self.coord is not None and stream.owner is not None and self.max_streams_per_user > 0:\n",
  "            if False:\n", ["tests/test_scale.py"]),
 ("sign-in-count: sign-in attempts are counted in each process alone", "jarvis/auth.py",
  "    if not cfg.redis_url:\n        return {\"storage_uri\": \"memory://\"}\n",
  "    if True:\n        return {\"storage_uri\": \"memory://\"}\n", ["tests/test_scale.py"]),
 ("pg-down: a broken PostgreSQL connection does not make the database down (each prompt waits for the pool)", "jarvis/engines/postgres.py",
  "            if not self._down:\n                return self._pool", "            if True:\n                return self._pool",
  ["tests/test_postgres.py::test_postgres_stopped_mid_answer_refuses_new_prompts_and_stores_the_answer_once_back"]),
 ("pg-final-retry: an answer's final write is not retried while the database is unavailable", "jarvis/history.py",
  "            if time.monotonic() + RETRY_INTERVAL_S <= w.deadline:\n", "            if False:\n",
  ["tests/test_postgres.py::test_postgres_stopped_mid_answer_refuses_new_prompts_and_stores_the_answer_once_back"]),
 ("pg-busy: a busy pool counts the database as down", "jarvis/engines/postgres.py",
  "            self._suspect()  # in the background: every connection busy is not a server down", "            self._mark_down(e)",
  ["tests/test_postgres.py::test_a_busy_pool_answers_503_without_counting_the_database_down"]),
 ("pg-migrate-lock: the schema is created without the advisory lock", "jarvis/engines/postgres.py",
  '    db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))', "    pass",
  ["tests/test_postgres.py::test_processes_starting_at_once_create_the_schema_once"]),
 ("pg-write-lock: PostgreSQL write transactions take no lock", "jarvis/engines/postgres.py",
  '        self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))', "        pass",
  ["tests/test_postgres.py::test_prompts_stored_at_once_in_one_chat_form_one_line"]),
 ("mirror-expiry: the owner never looks whether a remote reader's key is still there", "jarvis/mirror.py",
  "                    if not self.coord.reader_alive(self.reader):\n", "                    if False:\n",
  ["tests/test_rejoin_scale.py"]),
 ("mirror-owner: a remote reader never gives up on an owner that holds no lease", "jarvis/mirror.py",
  "                if lost >= 2:\n", "                if False:\n", ["tests/test_rejoin_scale.py"]),
 ("owner-record: a free lease never names an answer left behind by a dead process", "jarvis/coord.py",
  "self._took_over(displaced or self._left_behind(lease))", "self._took_over(displaced)",
  ["tests/test_scale.py::test_a_prompt_after_a_dead_owners_lease_expired_marks_its_answer_interrupted"]),
 ("db-end-write: an answer's final write is back inside its end (Stop waits for the database)", "jarvis/stream.py",
  '        tried = s.store.writer.save(\n            s.message_id, "".join(self._parts), status, error, self.meta or None, s.trace_id\n        )\n        tried.wait(END_WRITE_WAIT_S)\n',
  '        try:\n            s.store.save_answer(s.message_id, "".join(self._parts), status, error, self.meta or None)\n        except JarvisError as e:\n            log.event("store_error", logging.ERROR, trace_id=s.trace_id, error=e.message)\n',
  ["tests/test_database_faults.py"]),
 ("db-checkpoint-wait: a checkpoint waits for the database", "jarvis/stream.py",
  '        s.store.writer.save(s.message_id, "".join(self._parts), "streaming", trace_id=s.trace_id)\n',
  '        s.store.writer.save(s.message_id, "".join(self._parts), "streaming", trace_id=s.trace_id).wait()\n',
  ["tests/test_database_faults.py::test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back"]),
 ("db-stop-lookup: Stop looks the session up in the database before the registry", "jarvis/api.py",
  "    live = live_answer(j.registry, session_id)\n", "    j.store.require_session(session_id, owner())\n    live = live_answer(j.registry, session_id)\n",
  ["tests/test_database_faults.py::test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back"]),
 ("db-stop-sign-in: Stop signs its caller in through the database", "jarvis/auth.py",
  '    if request.endpoint == "api.stop" and _holds_live_answer(j):\n', "    if False:\n",
  ["tests/test_database_faults.py::test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back"]),
 ("db-watchdog: a PostgreSQL call has no deadline of Jarvis's own (a stopped server hangs it)", "jarvis/engines/postgres.py",
  "                        _sever(conn)\n", "                        pass\n",
  ["tests/test_database_faults.py::test_a_hung_postgres_answers_503_within_the_database_timeout"]),
 ("db-sqlite-busy: a locked SQLite database is a store error, not unavailable (no 503, no retry)", "jarvis/engines/sqlite.py",
  '            if (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF in BUSY_CODES:\n', "            if False:\n",
  ["tests/test_database_faults.py::test_a_locked_sqlite_database_answers_503_and_never_holds_an_answers_end"]),
 ("db-shutdown-writes: shutdown does not wait for the answers' final writes", "jarvis/__init__.py",
  "        self.store.writer.close(max(0.0, deadline - time.monotonic()))\n", "",
  ["tests/test_database_faults.py::test_shutdown_waits_for_an_answers_final_write_until_the_database_takes_it"]),
 ("db-server-timeouts: PostgreSQL connections carry no statement_timeout or lock_timeout", "jarvis/engines/postgres.py",
  '        "options": f"{options} -c statement_timeout={server_ms} -c lock_timeout={server_ms}".strip(),\n',
  '        "options": options,\n',
  ["tests/test_database_faults.py::test_a_postgres_write_lock_held_elsewhere_answers_503_within_the_timeout"]),
]


def run(name, files, old, new, tests) -> list[str]:
    """Apply one mutant to a fresh copy of HEAD; returns the tests that failed."""
    with tempfile.TemporaryDirectory() as root:
        subprocess.run(f"git -C {ROOT} archive HEAD | tar -x -C {root}", shell=True, check=True)
        files = files if isinstance(files, list) else [files]
        olds = old if isinstance(old, list) else [old]
        news = new if isinstance(new, list) else [new]
        for f, o, n in zip(files, olds, news, strict=True):
            path = os.path.join(root, f)
            text = open(path).read()
            assert text.count(o) == 1, f"{name}: the text to mutate is not found once in {f}"
            open(path, "w").write(text.replace(o, n))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=root, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        return sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)))


def main(wanted: list[str]) -> None:
    for mutant in MUTANTS:
        if wanted and not any(mutant[0].startswith(w) for w in wanted):
            continue
        failed = run(*mutant)
        print(f"{mutant[0]}\n  " + ("\n  ".join(failed) if failed else "SURVIVED"), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
