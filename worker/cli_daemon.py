"""``autopromote run``: the long-running worker (see worker/daemon.py)."""

from __future__ import annotations

import argparse
import sys

import anyio

from worker import cli
from worker.config import PRESET_NAMES, ConfigError, load_config, load_settings


def cmd_run(args: argparse.Namespace) -> int:
    from worker.daemon import StartupError, run_worker
    from worker.db.connect import DatabaseUnavailable
    from worker.db.embedded import EmbeddedPostgresError
    from worker.db.migrate import MigrationError

    try:
        settings = load_settings()
        config = load_config(preset=args.preset)
    except ConfigError as exc:
        raise cli.CliError(str(exc), cli.EXIT_USAGE) from None

    async def go() -> int:
        return await run_worker(settings, config, apply_migrations=args.migrate)

    try:
        return anyio.run(go)
    except StartupError as exc:
        raise cli.CliError(str(exc), exc.code) from None
    except (DatabaseUnavailable, EmbeddedPostgresError) as exc:
        raise cli.CliError(str(exc), cli.EXIT_DB) from None
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE


def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the worker: listen, fold, evaluate, promote, guard, roll back; serve /healthz /readyz /metrics",
        description="Run until SIGTERM or SIGINT (graceful, AUTO_PROMOTION_SHUTDOWN_GRACE seconds); a second signal "
        "exits at once. Without DATABASE_URL a throw-away embedded PostgreSQL is started and migrated. "
        "Exit codes: 0 stopped by a signal, 1 a task failed with a bug, 2 bad configuration or pending migrations, "
        "3 database unreachable.",
    )
    p.add_argument("--migrate", action="store_true", help="apply pending migrations before starting")
    p.add_argument(
        "--preset", choices=PRESET_NAMES, help="decision preset (default: AUTO_PROMOTION_PRESET, else balanced)"
    )
    p.set_defaults(handler=cmd_run)


cli.register(_register)
