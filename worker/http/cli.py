"""``autopromote serve`` (the HTTP API alone, no daemon tasks) and ``autopromote token create``."""

from __future__ import annotations

import argparse
import json
import sys
import time

import anyio
import structlog

from worker.cli import EXIT_OK, CliError, _config, _run_async, _settings, register
from worker.config import ConfigError
from worker.http.tokens import ROLES, TOKENS_ENV, generate_token, parse_tokens, token_entry

log = structlog.get_logger("worker.http.serve")


# ----------------------------------------------------------------------------------------------- token
def cmd_token_create(args: argparse.Namespace) -> int:
    token = generate_token()
    try:
        entry = token_entry(args.name, args.role, token)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    replaces = False
    try:
        replaces = any(e.name == args.name for e in parse_tokens(_settings().api_tokens))
    except (CliError, ConfigError):
        pass  # the current configuration is not this command's business; `serve` reports it
    if args.json:
        print(
            json.dumps(
                {"name": args.name, "role": args.role, "token": token, "entry": entry, "replacesExisting": replaces},
                indent=2,
            )
        )
        return EXIT_OK
    print(f"token for {args.name} ({args.role}), shown once; store it in your secret manager now:")
    print(f"  {token}")
    print()
    print(f"add this entry to {TOKENS_ENV} (comma-separated with the others):")
    print(f"  {entry}")
    if replaces:
        print(f"note: {TOKENS_ENV} already has an entry named {args.name!r}; replace it with this one", file=sys.stderr)
    print()
    print("use it as: Authorization: Bearer <token>", file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.host is not None:
        settings = settings.model_copy(update={"http_host": args.host})
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise CliError(f"--port must be between 0 and 65535, got {args.port}")
        settings = settings.model_copy(update={"http_port": args.port})
    effective = _config(None)
    try:
        parse_tokens(settings.api_tokens)  # before any database work: a typo should fail fast
    except ConfigError as exc:
        raise CliError(str(exc)) from None

    async def go() -> int:
        from pathlib import Path

        from aiohttp import web

        from worker.db.connect import connect, create_pool, redact_url, resolve_database
        from worker.db.migrate import migrate, pending_migrations
        from worker.engine import Engine
        from worker.events import EventBus
        from worker.http.app import AppContext, Health, create_app

        schema_dir = Path(settings.schema_dir) if settings.schema_dir else None
        async with resolve_database(settings.database_url) as db:
            conn = await connect(db.url)
            try:
                if db.embedded is not None:
                    print("note: DATABASE_URL is not set; serving a throw-away embedded database", file=sys.stderr)
                    await migrate(conn, schema_dir)
                else:
                    pending = await pending_migrations(conn, schema_dir)
                    if pending:
                        raise CliError(
                            f"{redact_url(db.url)} lacks migrations {', '.join(pending)}; run "
                            "`autopromote migrate` first",
                            1,
                        )
            finally:
                await conn.close()
            pool = await create_pool(db.url, min_size=1, max_size=settings.pool_size)
            try:
                ctx = AppContext(
                    pool=pool,
                    settings=settings,
                    config=effective,
                    engine=Engine(pool, settings, effective),
                    events=EventBus(),
                    health=Health(
                        listener_connected=False, catchup_done=True, listener_required=False, started_at=time.time()
                    ),
                    database_url=db.url,
                )
                try:
                    app = create_app(ctx)
                except ConfigError as exc:
                    raise CliError(str(exc)) from None
                runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_grace, access_log=None)
                await runner.setup()
                try:
                    site = web.TCPSite(runner, settings.http_host, settings.http_port)
                    try:
                        await site.start()
                    except OSError as exc:
                        raise CliError(f"cannot listen on {settings.http_host}:{settings.http_port}: {exc}") from exc
                    host, port = _bound_address(runner, settings.http_host, settings.http_port)
                    log.info("serve.listening", url=f"http://{host}:{port}", database=redact_url(db.url))
                    print(f"serving the API on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
                    await _wait_for_stop_signal()
                    log.info("serve.stopping")
                finally:
                    await runner.cleanup()
            finally:
                await pool.close()
        return EXIT_OK

    return _run_async(go)


def _bound_address(runner: object, host: str, port: int) -> tuple[str, int]:
    """The address actually bound (port 0 picks one)."""
    addresses = getattr(runner, "addresses", None) or []
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return str(address[0]), int(address[1])
    return host, port


async def _wait_for_stop_signal() -> None:
    import signal

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


# -------------------------------------------------------------------------------------------- register
def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API alone (no listener, folder or scanner)")
    p.add_argument("--host", help="address to listen on (default: AUTO_PROMOTION_HTTP_HOST)")
    p.add_argument("--port", type=int, help="port to listen on, 0 for any free one (default: AUTO_PROMOTION_HTTP_PORT)")
    p.set_defaults(handler=cmd_serve)

    tok = sub.add_parser("token", help="API tokens")
    tok_sub = tok.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    p = tok_sub.add_parser("create", help=f"print a new random token once, and the entry to add to {TOKENS_ENV}")
    p.add_argument("--name", required=True, help="who uses the token; the audit log shows it as the actor")
    p.add_argument(
        "--role", required=True, choices=ROLES, help="viewer (reads, check) or operator (also scan, promote, rollback)"
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=cmd_token_create)


register(_add_commands)
