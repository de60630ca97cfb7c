"""The ``autopromote`` command line. Each command parses arguments and calls one function of the package.

Exit codes: 0 done / eligible, 1 not eligible or refused, 2 bad usage or input, 3 database unreachable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from worker.config import (
    PRESET_NAMES,
    ConfigError,
    EffectiveConfig,
    Settings,
    load_config,
    load_settings,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_DB = 0, 1, 2, 3


class CliError(Exception):
    """A user-facing failure: message printed to stderr, process exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _config(preset: str | None, overrides: dict[str, Any] | None = None) -> EffectiveConfig:
    try:
        return load_config(preset=preset, overrides=overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def settle_imports() -> None:
    """Call once the command has imported what it runs (a short process): what exists now (modules, classes,
    functions: hundreds of thousands of objects with numpy, scipy and pydantic) is moved out of the garbage
    collector's view, so that the collections the command's own allocations trigger do not walk it again and again
    (about a sixth of a 10,000-experiment scan's CPU time)."""
    gc.freeze()


def _run_async(fn: Callable[[], Awaitable[int]]) -> int:
    from worker.db.connect import DatabaseUnavailable
    from worker.db.embedded import EmbeddedPostgresError
    from worker.db.migrate import MigrationError

    try:
        return anyio.run(fn)
    except DatabaseUnavailable as exc:
        raise CliError(str(exc), EXIT_DB) from None
    except EmbeddedPostgresError as exc:
        raise CliError(str(exc), EXIT_DB) from None
    except MigrationError as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None


# ------------------------------------------------------------------------------------------------- migrate
def cmd_migrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from worker.db.connect import connect, redact_url, resolve_database
    from worker.db.migrate import migrate

    settings = _settings()

    async def go() -> int:
        async with resolve_database(settings.database_url) as db:
            if db.embedded is not None:
                print("note: DATABASE_URL is not set; migrating a throw-away embedded database", file=sys.stderr)
            conn = await connect(db.url)
            try:
                schema_dir = Path(settings.schema_dir) if settings.schema_dir else None
                result = await migrate(conn, schema_dir)
            finally:
                await conn.close()
        if args.json:
            _print_json(
                {
                    "applied": result.applied,
                    "alreadyApplied": result.already_applied,
                    "unknownInDatabase": result.unknown_in_database,
                }
            )
        else:
            target = redact_url(db.url)
            if result.applied:
                print(f"applied {len(result.applied)} migration(s) to {target}: {', '.join(result.applied)}")
            else:
                print(f"{target} is up to date ({len(result.already_applied)} migration(s) applied)")
            if result.unknown_in_database:
                print(
                    "warning: the database has migrations this version does not know: "
                    + ", ".join(result.unknown_in_database),
                    file=sys.stderr,
                )
        return EXIT_OK

    return _run_async(go)


# -------------------------------------------------------------------------------------------------- config
def cmd_config_show(args: argparse.Namespace) -> int:
    from worker.config.layering import _flatten

    effective = _config(args.preset)
    public = effective.config.public()
    if args.json:
        _print_json({"preset": effective.preset, "config": public, "sources": effective.sources})
        return EXIT_OK
    print(f"preset: {effective.preset}")
    flat = _flatten(public)
    width = max(len(k) for k in flat)
    for path, value in flat.items():
        shown = json.dumps(value) if not isinstance(value, str) else value
        print(f"  {path:<{width}}  {shown:<28} ({effective.sources.get(path, 'default')})")
    return EXIT_OK


def cmd_config_validate(args: argparse.Namespace) -> int:
    errors: list[str] = []
    try:
        load_config(preset=args.preset)
    except ConfigError as exc:
        errors.extend(exc.errors)
    try:
        load_settings()
    except ConfigError as exc:
        errors.extend(exc.errors)
    if args.json:
        _print_json({"valid": not errors, "errors": errors})
    elif errors:
        print(f"configuration is invalid ({len(errors)} error(s)):", file=sys.stderr)
        for error in errors:
            print(f"  - {error}", file=sys.stderr)
    else:
        print("configuration is valid")
    return EXIT_OK if not errors else EXIT_REFUSED


def settings_reference_markdown() -> str:
    """The configuration reference table of the README, generated from the config models."""
    from worker.config import all_settings

    lines = ["| Setting | Environment variable | Default | What it does |", "|---|---|---|---|"]
    for info in all_settings():
        default = info.default
        if isinstance(default, tuple):
            shown = ",".join(str(x) for x in default) if default else "(empty)"
        elif default is None:
            shown = "(unset)"
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default)
        lines.append(f"| `{info.path}` | `{info.env}` | `{shown}` | {info.description} |")
    return "\n".join(lines)


def cmd_config_reference(args: argparse.Namespace) -> int:
    print(settings_reference_markdown())
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- main
Handler = Callable[[argparse.Namespace], int]
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="autopromote",
        description="Promote A/B test winners with peeking-safe statistics, driven by PostgreSQL events.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("migrate", help="apply missing schema migrations (safe to run from many replicas)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_migrate)

    cfg = sub.add_parser("config", help="show or validate the effective configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    p = cfg_sub.add_parser("show", help="print the effective configuration and where each value came from")
    p.add_argument("--preset", choices=PRESET_NAMES, help="preset to start from (default: AUTO_PROMOTION_PRESET)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=cmd_config_show)
    p = cfg_sub.add_parser("validate", help="exit 1 listing every configuration error")
    p.add_argument("--preset", choices=PRESET_NAMES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_config_validate)
    p = cfg_sub.add_parser("reference", help="print every setting, its default and variable as a Markdown table")
    p.set_defaults(handler=cmd_config_reference)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def _version() -> str:
    from worker import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``autopromote`` and ``python -m worker``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from worker.logging import configure_logging

    level = os.environ.get("LOG_LEVEL", "info").lower()
    configure_logging(
        level if level in {"debug", "info", "warning", "error"} else "info", os.environ.get("LOG_FORMAT", "auto")
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _load_command_modules() -> None:
    """Command groups that live beside the code they drive register themselves here."""
    import importlib

    for module in (
        "worker.cli_engine",
        "worker.cli_metrics",
        "worker.cli_plan",
        "worker.cli_daemon",
        "worker.cli_demo",
        "worker.http.cli",
    ):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def register(fn: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]) -> None:
    """Add a command group (called at import time by the modules listed in ``_load_command_modules``)."""
    if fn not in _EXTRA_COMMANDS:
        _EXTRA_COMMANDS.append(fn)
