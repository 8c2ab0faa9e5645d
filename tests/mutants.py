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
    (
        "waiting-cancel: the wait for the predecessor ignores the waiting stream's cancel",
        "jarvis/lifecycle/worker.py",
        "undo = [prev.released.then(gate.set), s.scope.on_cancel(gate.set)]",
        "undo = [prev.released.then(gate.set)]",
        ["tests/test_core.py"],
    ),
    (
        "waiting-handoff: a stream cancelled while waiting frees its successor at once (no inherited wait)",
        "jarvis/lifecycle/worker.py",
        "            else:\n                self._chain(self._prev)\n",
        "            else:\n                self.released.set()\n",
        ["tests/test_core.py", "tests/test_lifecycle.py", "tests/test_registry_model.py"],
    ),
    (
        "watcher: the disconnect watcher polls on after shutdown",
        "jarvis/lifecycle/watch.py",
        "if not watched or closed:",
        "if not watched:",
        ["tests/test_core.py"],
    ),
    (
        "daemon: workers are not daemons",
        "jarvis/lifecycle/worker.py",
        "daemon=True)",
        "daemon=False)",
        ["tests/test_ops.py"],
    ),
    (
        "store-first: register (and cancel the old answer) before the prompt is stored",
        "jarvis/web/answers.py",
        "    stream.user_message_id, stream.message_id = store_rows(trace_id)\n    j.registry.hand_over(stream)  # supersedes the session's stream; 503 when full\n",
        "    prev = j.registry.register(stream)\n    stream.user_message_id, stream.message_id = store_rows(trace_id)\n    stream.start(prev)\n",
        ["tests/test_api.py"],
    ),
    (
        "failed-start: a failed start leaves the stream registered",
        "jarvis/lifecycle/registry.py",
        '        stream.fail(JarvisError(f"internal error: {type(e).__name__}"))\n        raise',
        "        raise",
        ["tests/test_api.py"],
    ),
    (
        "close-wait: the model's close waits 2 s for a stuck holder, outside the deadline",
        "jarvis/upstream/local.py",
        "        if self._slot.close():\n            self._model.free()\n",
        "        if self._slot.close():\n            self._model.free()\n        else:\n            time.sleep(2.0)\n",
        ["tests/test_ops.py"],
    ),
    (
        "last-take: the body's last take comes after the detach (a detached worker's late write is read)",
        "jarvis/lifecycle/body.py",
        '            out = self.record.convert(self.s, worker.handoff.take())\n            if detached:\n                log.event("worker_detached", logging.WARNING, trace_id=s.trace_id, session=s.session_id)\n                worker.detach(s.lease)  # not streaming (its upstream is shut): the session goes on\n',
        '            if detached:\n                log.event("worker_detached", logging.WARNING, trace_id=s.trace_id, session=s.session_id)\n                worker.detach(s.lease)  # not streaming (its upstream is shut): the session goes on\n            out = self.record.convert(self.s, worker.handoff.take())\n',
        ["tests/test_core.py"],
    ),
    (
        "abort-deadline: the abort callback ignores the deadlines",
        "jarvis/upstream/local.py",
        "return self._slot.abort or time.monotonic() > self._deadline.at",
        "return self._slot.abort",
        ["tests/test_local.py"],
    ),
    (
        "load-deadline: loading the model and fitting the prompt do not count against the first-token deadline",
        ["jarvis/upstream/local.py", "jarvis/upstream/local.py"],
        [
            "            self._deadline.check()  # a load cannot be aborted: it counts once it returns\n",
            "        tokens, trim = fit(llama, self._model.template, messages, self.n_ctx)\n        self._deadline.check()\n",
        ],
        ["", "        tokens, trim = fit(llama, self._model.template, messages, self.n_ctx)\n"],
        ["tests/test_local.py"],
    ),
    (
        "probe: the disconnect probe only under jarvis serve (not under python -m waitress)",
        "jarvis/web/answers.py",
        'client_gone=request.environ.get("waitress.client_disconnected"),',
        "client_gone=None,",
        ["tests/test_lifecycle.py"],
    ),
    (
        "follow-up: no follow-up heartbeat",
        "jarvis/lifecycle/body.py",
        "follow_ups = (follow_ups + 1) % 3",
        "follow_ups = 0",
        ["tests/test_lifecycle.py"],
    ),
    (
        "checkpoints: both 'superseded before it began' checks removed",
        ["jarvis/lifecycle/worker.py", "jarvis/upstream/remote.py"],
        [
            "if s.scope.cancelled:  # checkpoint: superseded before it began",
            "if cancel.cancelled:  # checkpoint: superseded or stopped before the call",
        ],
        [
            "if False:  # checkpoint: superseded before it began",
            "if False:  # checkpoint: superseded or stopped before the call",
        ],
        ["tests/test_core.py", "tests/test_lifecycle.py", "tests/test_api.py"],
    ),
    (
        "supersede: supersede stops cancelling the old stream",
        "jarvis/lifecycle/registry.py",
        "            prev.cancel(Reason.SUPERSEDED)\n",
        "            pass\n",
        ["tests/test_registry_model.py"],
    ),
    (
        "socket-close: cancel stops closing the upstream socket",
        "jarvis/upstream/connect.py",
        "    try:\n        sock.shutdown(socket.SHUT_RDWR)\n",
        "    return\n    try:\n        sock.shutdown(socket.SHUT_RDWR)\n",
        ["tests/test_lifecycle.py", "tests/test_api.py"],
    ),
    (
        "predecessor-wait: the worker no longer waits for its predecessor",
        "jarvis/lifecycle/worker.py",
        "                self._wait_for(self._prev, deadline)\n",
        "                pass\n",
        ["tests/test_core.py", "tests/test_lifecycle.py"],
    ),
    (
        "grace-expiry: a detached answer's grace never runs out",
        "jarvis/lifecycle/body.py",
        "            if left <= 0:\n",
        "            if False:\n",
        ["tests/test_rejoin.py"],
    ),
    (
        "takeover: a reader attaching to a detached answer only watches it",
        "jarvis/lifecycle/body.py",
        "            if self.holder is None:\n                self._hold(tap)\n",
        "            if False:\n                self._hold(tap)\n",
        ["tests/test_rejoin.py"],
    ),
    (
        "watcher-leave: a watcher's leaving counts as the holder's",
        "jarvis/lifecycle/body.py",
        "            if tap in self._watchers:\n                self._watchers.remove(tap)\n                return\n",
        "            if tap in self._watchers:\n                self._watchers.remove(tap)\n                tap = self.holder\n",
        ["tests/test_rejoin.py"],
    ),
    (
        "replay: an attach starts at the live events, not at the answer's start",
        "jarvis/lifecycle/body.py",
        "            cursor = min(seen, len(body.events)) if seen is not None else 0\n",
        "            cursor = min(seen, len(body.events)) if seen is not None else len(body.events)\n",
        ["tests/test_rejoin.py"],
    ),
    (
        "lease-wait: the worker calls the model without the session's lease",
        "jarvis/lifecycle/worker.py",
        "            if lease is not None and not lease.acquire(s.scope, deadline):\n",
        "            if False:\n",
        ["tests/test_scale.py"],
    ),
    (
        "recovery-spare: a starting process marks every streaming answer, live elsewhere or not",
        "jarvis/__init__.py",
        "            spared = coord.held(sessions)\n",
        "            spared = set()\n",
        ["tests/test_scale.py"],
    ),
    (
        "user-slots: an account's streams are counted in each process alone",
        "jarvis/lifecycle/registry.py",
        "        if registry.coord is not None and stream.owner is not None and registry.max_streams_per_user > 0:\n",
        "        if False:\n",
        ["tests/test_scale.py"],
    ),
    (
        "sign-in-count: sign-in attempts are counted in each process alone",
        "jarvis/web/signin.py",
        '    if not cfg.redis_url:\n        return {"storage_uri": "memory://"}\n',
        '    if True:\n        return {"storage_uri": "memory://"}\n',
        ["tests/test_scale.py"],
    ),
    (
        "pg-down: a broken PostgreSQL connection does not make the database down (each prompt waits for the pool)",
        "jarvis/store/engines/postgres.py",
        "            if not self._down:\n                pool = self._pool\n",
        "            if True:\n                pool = self._pool\n",
        [
            "tests/test_postgres.py::test_postgres_stopped_mid_answer_refuses_new_prompts_and_stores_the_answer_once_back"
        ],
    ),
    (
        "pg-final-retry: an answer's final write is not retried while the database is unavailable",
        "jarvis/store/writer.py",
        "            if time.monotonic() + RETRY_INTERVAL_S <= w.deadline:\n",
        "            if False:\n",
        [
            "tests/test_postgres.py::test_postgres_stopped_mid_answer_refuses_new_prompts_and_stores_the_answer_once_back"
        ],
    ),
    (
        "pg-busy: a busy pool counts the database as down",
        "jarvis/store/engines/postgres.py",
        "        except PoolTimeout as e:  # every connection busy: not down (a pool that cannot connect says so)\n",
        "        except PoolTimeout as e:  # every connection busy: not down (a pool that cannot connect says so)\n            self._mark_down(e)\n",
        ["tests/test_postgres.py::test_a_busy_pool_answers_503_without_counting_the_database_down"],
    ),
    (
        "pg-migrate-lock: the schema is created without the advisory lock",
        "jarvis/store/engines/postgres.py",
        '    db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))',
        "    pass",
        ["tests/test_postgres.py::test_processes_starting_at_once_create_the_schema_once"],
    ),
    (
        "pg-write-lock: PostgreSQL write transactions take no lock",
        "jarvis/store/engines/postgres.py",
        '        self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))',
        "        pass",
        ["tests/test_postgres.py::test_prompts_stored_at_once_in_one_chat_form_one_line"],
    ),
    (
        "mirror-expiry: the owner never looks whether a remote reader's key is still there",
        "jarvis/cluster/mirror.py",
        "                    if not self.mirror.reader_alive(self.reader):\n",
        "                    if False:\n",
        ["tests/test_rejoin_scale.py"],
    ),
    (
        "mirror-owner: a remote reader never gives up on an owner that holds no lease",
        "jarvis/cluster/mirror.py",
        "                if lost >= 2:\n",
        "                if False:\n",
        ["tests/test_rejoin_scale.py"],
    ),
    (
        "owner-record: a free lease never names an answer left behind by a dead process",
        "jarvis/cluster/lease.py",
        "self._took_over(displaced or previous)",
        "self._took_over(displaced)",
        ["tests/test_scale.py::test_a_prompt_after_a_dead_owners_lease_expired_marks_its_answer_interrupted"],
    ),
    (
        "keeper-daemon: a keeper inherits the daemon flag of the thread that starts it",
        "jarvis/lifecycle/keepers.py",
        "name=name, daemon=False)",
        "name=name)",
        ["tests/test_rejoin.py"],
    ),
    (
        "keeper-refused: a keeper starts after shutdown closed the keepers",
        "jarvis/lifecycle/keepers.py",
        "            if self._closed:\n                return False\n",
        "",
        ["tests/test_rejoin.py"],
    ),
    (
        "reader-slots: attached readers take no stream slot (they can hold every server thread)",
        "jarvis/lifecycle/slots.py",
        "            if len(self._current()) + len(self.admitted) + self.readers >= self.max_streams:\n                raise TooManyStreams(",
        "            if False:\n                raise TooManyStreams(",
        ["tests/test_rejoin.py"],
    ),
    (
        "import-slot: an account may run several imports at once",
        "jarvis/web/api.py",
        "            if owner in self._owners:\n",
        "            if False:\n",
        ["tests/test_input.py::test_one_import_at_a_time_per_user_and_a_few_in_the_process"],
    ),
    (
        "import-values: an import is parsed however many values it holds",
        "jarvis/web/bodies.py",
        "    if _values(raw, max_values) > max_values:\n",
        "    if False:\n",
        ["tests/test_input.py::test_an_import_built_to_balloon_is_refused_before_it_is_parsed"],
    ),
    (
        "hash-slots: password checks run as many at once as sign-ins arrive",
        "jarvis/web/signin.py",
        '    hashing = current_app.extensions["jarvis.hashing"]\n',
        "    hashing = threading.Semaphore(1000)\n",
        ["tests/test_input.py::test_sign_ins_from_many_addresses_hash_a_few_at_a_time"],
    ),
    (
        "admit-first: the claim, and its cancel in every process, goes out before the local admission",
        "jarvis/lifecycle/registry.py",
        "        registry.admit(stream)  # AtCapacity, TooManyStreams: before any other process hears of it\n",
        "        pass\n",
        ["tests/test_cluster_faults.py::test_a_prompt_refused_for_capacity_at_b_leaves_the_live_answer_at_a"],
    ),
    (
        "liveness: a lease held by a dead process is waited for, not taken over",
        "jarvis/cluster/lease.py",
        '            why, keys = "dead", [lease_key(lease.key), alive_key(process)]\n',
        "            why, keys = None, []\n",
        [
            "tests/test_cluster_faults.py::test_a_prompt_after_the_owner_is_killed_streams_within_seconds_not_the_lease"
        ],
    ),
    (
        "one-deadline: the lease gets a supersede timeout of its own after the wait for the predecessor",
        "jarvis/lifecycle/worker.py",
        "            if lease is not None and not lease.acquire(s.scope, deadline):\n",
        "            if lease is not None and not lease.acquire(s.scope, time.monotonic() + s.config.supersede_timeout_s):\n",
        [
            "tests/test_cluster_faults.py::test_one_deadline_covers_the_wait_for_the_predecessor_and_for_the_lease"
        ],
    ),
    (
        "stuck-lease: a detached worker keeps its lease and its place in the session's chain",
        "jarvis/lifecycle/body.py",
        "                worker.detach(s.lease)  # not streaming (its upstream is shut): the session goes on\n",
        "",
        ["tests/test_cluster_faults.py::test_a_stuck_worker_gives_its_lease_back_once_detached"],
    ),
    (
        "reason-table: a control message's unknown reason ends the answer as stopped",
        "jarvis/cluster/control.py",
        "                reason = Reason(reason)\n",
        "                reason = Reason(reason) if reason in Reason._value2member_map_ else Reason.STOPPED\n",
        ["tests/test_cluster_faults.py::test_a_control_message_with_an_unknown_reason_cancels_nothing"],
    ),
    (
        "redis-pool: a process's Redis pool has no real cap",
        "jarvis/cluster/link.py",
        "url, max_connections=max_connections, timeout=timeout_s,",
        "url, max_connections=10_000, timeout=timeout_s,",
        ["tests/test_cluster_faults.py::test_a_process_opens_at_most_its_pool_of_redis_connections"],
    ),
    (
        "head-mirror: a HEAD on the attach route attaches a reader like a GET",
        "jarvis/web/answers.py",
        '    if request.method == "HEAD":\n',
        "    if False:\n",
        [
            "tests/test_cluster_faults.py::test_head_on_the_attach_route_says_whether_an_answer_is_live_and_starts_no_mirror"
        ],
    ),
    (
        "event-id: Last-Event-ID numbers are read with isdigit() and no bound",
        "jarvis/lifecycle/body.py",
        "not (0 < len(n) <= EVENT_ID_DIGITS and n.isascii() and n.isdigit())",
        "not n.isdigit()",
        [
            "tests/test_cluster_faults.py::test_a_last_event_id_that_is_not_a_number_replays_from_the_start",
            "tests/test_cluster_faults.py::test_a_bad_last_event_id_at_b_leaves_a_on_the_control_channel",
        ],
    ),
    (
        "listener-survives: a message whose handling fails takes the listener off the channel",
        "jarvis/cluster/control.py",
        '                    self._handle_safely(message["data"])\n',
        '                    self._handle(message["data"])\n',
        ["tests/test_cluster_faults.py::test_the_listener_survives_a_message_whose_handling_fails"],
    ),
    (
        "host-fifo: a freed host goes to the newest prompt in line, not the oldest",
        "jarvis/upstream/hosts.py",
        "        for waiter in list(self._waiting):\n",
        "        for waiter in reversed(self._waiting):\n",
        ["tests/test_hosts.py::test_a_freed_host_goes_to_the_first_in_line_not_to_a_later_prompt"],
    ),
    (
        "host-deadline: a prompt that waited in line gets a fresh first-token timeout at its host",
        "jarvis/upstream/hosts.py",
        "session, first_token_by=first_token_by)",
        "session, first_token_by=None)",
        ["tests/test_hosts.py::test_a_queued_prompts_whole_wait_is_bounded_by_one_first_token_timeout"],
    ),
    (
        "dns: the model server's name is looked up outside the cancel scope and the connect timeout",
        "jarvis/upstream/connect.py",
        "in _resolve(host, port, deadline, cancel):",
        "in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):",
        [
            "tests/test_upstreams.py::test_stop_while_the_model_servers_name_resolves_ends_the_answer_at_once",
            "tests/test_upstreams.py::test_the_connect_timeout_bounds_the_name_lookup",
        ],
    ),
    (
        "close-event: the channel no longer tells the registry that a client closed (only the poll sees it)",
        "jarvis/web/server.py",
        "        on_close = self.jarvis.registry.watcher.client_closed\n",
        "        on_close = lambda gone: None  # noqa: E731\n",
        ["tests/test_serving.py::test_a_client_that_closes_during_silence_closes_the_upstream_at_once"],
    ),
    (
        "host-probe-state: a prompt tries hosts the probe found down itself (a connection, and a wait, per prompt)",
        "jarvis/upstream/hosts.py",
        '        return with_model or up or [h for h in left if h.state == "unknown"]\n',
        "        return with_model or up or left\n",
        [
            "tests/test_hosts.py::test_prompts_to_hosts_the_probe_found_down_answer_at_once_without_a_connection_each"
        ],
    ),
    (
        "db-end-write: an answer's final write is back inside its end (Stop waits for the database)",
        "jarvis/lifecycle/record.py",
        '        tried = s.store.writer.save(\n            s.message_id, "".join(self.parts), status, error, self.stored_meta(), s.trace_id\n        )\n        tried.wait(END_WRITE_WAIT_S)\n',
        '        s.store.save_answer(s.message_id, "".join(self.parts), status, error, self.stored_meta())\n',
        ["tests/test_database_faults.py"],
    ),
    (
        "db-checkpoint-wait: a checkpoint waits for the database",
        "jarvis/lifecycle/record.py",
        '            s.message_id, "".join(self.parts), "streaming", meta=self.stored_meta(), trace_id=s.trace_id\n        )\n',
        '            s.message_id, "".join(self.parts), "streaming", meta=self.stored_meta(), trace_id=s.trace_id\n        ).wait()\n',
        [
            "tests/test_database_faults.py::test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back"
        ],
    ),
    (
        "db-stop-lookup: Stop looks the session up in the database before the registry",
        "jarvis/web/answers.py",
        "    live = live_answer(j.registry, session_id)\n",
        "    j.store.require_session(session_id, owner())\n    live = live_answer(j.registry, session_id)\n",
        [
            "tests/test_database_faults.py::test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back"
        ],
    ),
    (
        "db-stop-sign-in: Stop signs its caller in through the database",
        "jarvis/web/auth.py",
        '    if request.endpoint == "answers.stop" and _holds_live_answer(j):\n',
        "    if False:\n",
        [
            "tests/test_database_faults.py::test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back"
        ],
    ),
    (
        "db-watchdog: a PostgreSQL call has no deadline of Jarvis's own (a stopped server hangs it)",
        "jarvis/store/engines/watchdog.py",
        "                        _sever(conn)\n",
        "                        pass\n",
        ["tests/test_database_faults.py::test_a_hung_postgres_answers_503_within_the_database_timeout"],
    ),
    (
        "db-sqlite-busy: a locked SQLite database is a store error, not unavailable (no 503, no retry)",
        "jarvis/store/engines/sqlite.py",
        '            if (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF in BUSY_CODES:\n',
        "            if False:\n",
        [
            "tests/test_database_faults.py::test_a_locked_sqlite_database_answers_503_and_never_holds_an_answers_end"
        ],
    ),
    (
        "db-shutdown-writes: shutdown does not wait for the answers' final writes",
        "jarvis/__init__.py",
        "        self.store.writer.close(max(0.0, deadline - time.monotonic()))\n",
        "",
        [
            "tests/test_database_faults.py::test_shutdown_waits_for_an_answers_final_write_until_the_database_takes_it"
        ],
    ),
    (
        "db-server-timeouts: PostgreSQL connections carry no statement_timeout or lock_timeout",
        "jarvis/store/engines/postgres.py",
        '        "options": f"{options} -c statement_timeout={server_ms} -c lock_timeout={server_ms}".strip(),\n',
        '        "options": options,\n',
        [
            "tests/test_database_faults.py::test_a_postgres_write_lock_held_elsewhere_answers_503_within_the_timeout"
        ],
    ),
    (
        "page-resume-once: the page resumes a broken answer once, not for as long as it lives",
        "jarvis/static/connection.js",
        '    if ((await follow(run, from)) === "gone") return;\n',
        "    await follow(run, from);\n    return;\n",
        [
            "tests/test_browser_rejoin.py::test_an_answer_whose_connection_breaks_twice_resumes_each_time_and_finishes_in_full"
        ],
    ),
    (
        "render-any-stream: the renderer takes any longer text for the shown answer grown",
        "jarvis/static/markdown.js",
        "const grown = state && stream !== null && state.stream === stream && text.length >= state.given.length;",
        "const grown = state && text.length >= state.given.length;",
        ["tests/test_render.py"],
    ),
    (
        "prefix-trust: X-Forwarded-Prefix is believed from any address",
        "jarvis/web/page.py",
        'if prefix and PREFIX.fullmatch(prefix) and self._trusted(environ.get("REMOTE_ADDR", "")):',
        "if prefix and PREFIX.fullmatch(prefix):",
        ["tests/test_subpath.py"],
    ),
    (
        "stop-scan: a Stop scans every live stream for its answer (64 Stops at once: 8,192 looks)",
        "jarvis/web/answers.py",
        "    newest = registry.current(session_id)  # a session's streams are keyed by its id\n",
        "    newest = max((s for s in registry.live() if s.key == session_id), key=lambda s: s.started_at, default=None)\n",
        ["tests/test_serving.py::test_a_stop_looks_its_answer_up_without_scanning_every_live_stream"],
    ),
    (
        "tool-cancel: a running tool call waits for its tool (to JARVIS_TOOL_TIMEOUT) despite Stop",
        "jarvis/tools/box.py",
        "        undo = cancel.on_cancel(done.set)  # checkpoint: Stop wakes this wait at once\n",
        "        undo = lambda: None  # noqa: E731\n",
        ["tests/test_tools.py::test_cancel_returns_within_50_ms"],
    ),
    (
        "forced-cut: a forced tool call cut by the token limit comes out as half its arguments",
        "jarvis/upstream/forced.py",
        '            if item.reason == "length":  # half its arguments would be no call at all\n',
        "            if False:\n",
        ["tests/test_local_structured.py"],
    ),
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
