"""Jarvis: a chat-assistant server that streams answers from a local model and never hangs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask

from . import log
from .accounts import Accounts
from .config import Config
from .history import Store
from .metrics import Metrics
from .registry import Registry
from .upstream import Upstream, select_upstream


@dataclass
class Jarvis:
    """The per-app objects the routes hand to the core."""

    config: Config
    store: Store
    registry: Registry
    upstream: Upstream
    metrics: Metrics
    accounts: Accounts

    def shutdown(self, timeout: float | None = None) -> list:
        """Cancel every live stream and wait (bounded); returns the streams left."""
        left = self.registry.shutdown(self.config.shutdown_timeout_s if timeout is None else timeout)
        self.upstream.close()
        if not left:  # a detached worker's stream may still save its answer
            self.store.close()
        return left


def create_app(config: Config | Mapping | None = None) -> Flask:
    """Build the app: defaults, then JARVIS_* variables, then ``config`` (a Config or overrides)."""
    cfg = config if isinstance(config, Config) else Config.from_env(overrides=config)
    log.setup(cfg.log_format)
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    store = Store(cfg.database or os.path.join(app.instance_path, "jarvis.sqlite3"))
    recovered = store.recover()
    if recovered:
        log.event("recovered_interrupted", count=recovered)
    registry = Registry(cfg.max_streams, cfg.disconnect_poll_s)
    metrics = Metrics(live_streams=registry.active)
    app.extensions["jarvis"] = Jarvis(cfg, store, registry, select_upstream(cfg), metrics, Accounts(store))

    from . import api, auth, ollama_api, openai_api, web

    auth.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(ollama_api.bp)
    app.register_blueprint(web.bp)
    return app
