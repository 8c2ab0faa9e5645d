"""Jarvis: a chat-assistant server that streams answers from a local model and never hangs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask

from . import log
from .cluster.coord import Coordinator
from .config import Config
from .errors import CoordinationUnavailable
from .lifecycle.registry import Registry
from .metrics import Metrics
from .store import Store
from .upstream import Upstream, select_upstream
from .upstream.health import Prober
from .web.accounts import Accounts, RevocationWatch
from .web.server import CONTROL_THREADS

if TYPE_CHECKING:
    from .tools import ToolBox

# connections beyond the server's threads: the revocation watch and start-up work
POOL_RESERVE = 2


@dataclass
class Jarvis:
    """The per-app objects the routes hand to the core."""

    config: Config
    store: Store
    registry: Registry
    upstream: Upstream
    metrics: Metrics
    accounts: Accounts
    revocations: RevocationWatch
    health: Prober | None = None  # the upstream's health, probed in the background
    coord: Coordinator | None = None  # with JARVIS_REDIS_URL: leases and cancels across processes
    tools: ToolBox | None = None  # with JARVIS_MCP_CONFIG: the MCP servers whose tools answers may use

    def shutdown(self, timeout: float | None = None) -> list:
        """Cancel every live stream and wait (bounded); returns the streams left."""
        timeout = self.config.shutdown_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        left = self.registry.shutdown(timeout)
        if self.tools is not None:  # after the answers: none is left waiting on a tool
            servers = self.tools.close(max(0.0, deadline - time.monotonic()))
            if servers:
                log.event("tool_servers_left", logging.WARNING, servers=",".join(servers))
        if self.coord is not None:  # after the streams: their workers release their leases
            self.coord.close(max(0.0, deadline - time.monotonic()))
        self.revocations.close(max(0.0, deadline - time.monotonic()))
        if self.health is not None:
            self.health.close(deadline - time.monotonic())
        self.upstream.close()
        # the answers just ended are written in the background: wait for them with what is left of
        # the deadline (the closes above take moments), and name those left
        self.store.writer.close(max(0.0, deadline - time.monotonic()))
        if not left:  # a detached worker's stream may still save its answer
            self.store.close()
        return left


def create_app(config: Config | Mapping | None = None) -> Flask:
    """Build the app: defaults, then JARVIS_* variables, then ``config`` (a Config or overrides)."""
    cfg = config if isinstance(config, Config) else Config.from_env(overrides=config)
    log.setup(cfg.log_format)
    app = Flask(__name__, instance_path=cfg.instance_path(), instance_relative_config=True)
    private_dir(app.instance_path)
    app.extensions["jarvis"] = core(cfg)
    routes(app, cfg)
    return app


def core(cfg: Config) -> Jarvis:
    """The per-app objects, wired: the store, the registry, the upstream and its probe, with Redis
    the coordinator; the answers a crash left streaming are recovered before any route runs."""
    store = Store(
        cfg.database_path(),
        pool_size=cfg.max_streams + CONTROL_THREADS + POOL_RESERVE,
        timeout_s=cfg.database_timeout_s,
        final_retry_s=cfg.database_retry_s,
    )
    registry = Registry(
        cfg.max_streams, cfg.disconnect_poll_s, cfg.max_streams_per_user, cfg.max_readers_per_user
    )
    metrics = Metrics(live_streams=registry.active)
    upstream = select_upstream(cfg, metrics)
    health = Prober(upstream.health, cfg.health_interval_s, failures=metrics.unreachable).start()
    if cfg.redis_url:
        registry.coord = coordinator(cfg, registry, store)
    recover(store, registry.coord)
    accounts = Accounts(store)
    revocations = RevocationWatch(accounts, registry)
    return Jarvis(
        cfg,
        store,
        registry,
        upstream,
        metrics,
        accounts,
        revocations,
        health=health,
        coord=registry.coord,
        tools=toolbox(cfg),
    )


def coordinator(cfg: Config, registry: Registry, store: Store) -> Coordinator:
    """Leases and cancels across the processes that share JARVIS_REDIS_URL."""
    return Coordinator(
        cfg.redis_url,
        registry.cancel_older,
        cfg.lease_ttl_s,
        cfg.redis_timeout_s,
        store.interrupt,
        attach=registry.attach,
        liveness_ttl_s=cfg.liveness_ttl_s,
        # the server's threads, the listener and the renewer; mirror pumps wait for a free one
        max_connections=cfg.max_streams + CONTROL_THREADS + POOL_RESERVE,
    )


def routes(app: Flask, cfg: Config) -> None:
    """Sign-in, then every dialect's blueprint and the page; the app served under a sub-path too."""
    from .dialects import anthropic, completions, embeddings, models, ollama, openai, responses
    from .web import answers, api, auth, page

    auth.init_app(app)
    for blueprint in (
        api.bp,
        answers.bp,
        openai.bp,
        responses.bp,
        completions.bp,
        embeddings.bp,
        ollama.bp,
        models.bp,
        anthropic.bp,
        page.bp,
    ):
        app.register_blueprint(blueprint)
    app.wsgi_app = page.ForwardedPrefix(app.wsgi_app, cfg.trusted_proxies)  # served under a sub-path


def toolbox(cfg: Config) -> ToolBox | None:
    """The MCP servers of JARVIS_MCP_CONFIG (none started yet); the tools extra is needed only then."""
    if not cfg.mcp_config:
        return None
    from .tools import ToolBox

    return ToolBox.from_config(cfg)


def recover(store: Store, coord: Coordinator | None) -> None:
    """Mark the answers a crash left streaming as interrupted; with Redis, spare the sessions whose
    lease is held: another process is streaming them."""
    spared: set[str] = set()
    sessions = None  # all of them
    if coord is not None:
        try:
            sessions = store.streaming_sessions()
            spared = coord.held(sessions)
        except CoordinationUnavailable as e:  # nobody can tell a dead answer from a live one now
            log.event("recovery_skipped", logging.WARNING, error=e.message)
            return
        sessions -= spared
    recovered = store.recover(sessions)
    if recovered or spared:
        log.event("recovered_interrupted", count=recovered, skipped_live=len(spared))


def private_dir(path: str) -> None:
    """Create the instance folder for its owner alone: it holds every conversation and the keys."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # older installs made it 0755
