"""`autopromote demo [--duration SECONDS]`: the whole product on an embedded PostgreSQL, in one minute."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from typing import Any, TextIO

import anyio
import structlog

from worker.cli import EXIT_OK, CliError, _run_async, register
from worker.config import ConfigError, load_config, load_settings


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def run_demo(
    duration: float, *, database_url: str | None = None, out: TextIO = sys.stdout, http_port: int | None = None
) -> int:
    """Run the demo for ``duration`` seconds (or until Ctrl-C) and print its summary."""
    import os

    from aiohttp import web

    from worker.daemon import Daemon
    from worker.db.connect import connect, create_pool, redact_url, resolve_database
    from worker.db.migrate import migrate
    from worker.demo import (
        CUPED_TWINS,
        DEMO_CONFIG_ENV,
        SCENARIOS,
        STATUS_QUERY,
        Display,
        NotificationSink,
        TrafficSimulator,
        create_scenarios,
        manual_rollbacks,
        summary_lines,
    )

    try:
        import ab_autopromote_openfeature  # noqa: F401  (the traffic simulator's users are assigned by it)
    except ImportError:
        raise CliError(
            "the demo's traffic is assigned by the OpenFeature provider, which is not installed: "
            "`make install` installs it, or `pip install clients/openfeature-python`"
        ) from None
    display = Display(out)
    sink = NotificationSink(on_line=display.notification)
    runner = web.AppRunner(sink.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink_port = runner.addresses[0][1]
    port = http_port if http_port is not None else (8080 if _port_free(8080) else 0)
    from worker.http.auth import generate_token, token_entry

    operator_token = generate_token()  # printed once: signs in to the dashboard and authorises its actions
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith(("LOG_", "AUTO_PROMOTION_METHOD"))},
        **DEMO_CONFIG_ENV,
        "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{sink_port}/slack",
        "WEBHOOK_URL": f"http://127.0.0.1:{sink_port}/webhook",
        "WEBHOOK_SECRET": "demo-signing-secret",
        "AUTO_PROMOTION_HTTP_PORT": str(port),
        "AUTO_PROMOTION_API_TOKENS": token_entry("demo-operator", "operator", operator_token),
    }
    try:
        settings = load_settings(env)
        config = load_config(env=env)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    stop = anyio.Event()
    interrupted = False
    try:
        async with resolve_database(database_url) as db:
            conn = await connect(db.url)
            try:
                await migrate(conn)
                await create_scenarios(conn)
            finally:
                await conn.close()
            pool = await create_pool(db.url, min_size=2, max_size=settings.pool_size + 4)
            daemon = Daemon(url=db.url, pool=pool, settings=settings, config=config)
            simulator = TrafficSimulator(pool, db.url)
            started = time.monotonic()

            def header() -> list[str]:
                left = max(0.0, duration - (time.monotonic() - started))
                dash = f"http://127.0.0.1:{daemon.http_port}/" if daemon.http_port else "(starting)"
                return [
                    f"ab-autopromote demo  ·  {len(SCENARIOS) + len(CUPED_TWINS)} experiments  ·  {left:4.0f} s left"
                    "  ·  Ctrl-C stops",
                    f"dashboard/API: {dash}   sign in with the token {operator_token}",
                    "  (paste it into the sign-in form; for promote/roll back, also under 'Operator token')",
                    f"database: {redact_url(db.url)}",
                    f"traffic recorded: {simulator.recorded_exposures:,} exposures through ab_record_metrics",
                ]

            async def refresh() -> None:
                while not stop.is_set():
                    rows = await pool.fetch(STATUS_QUERY)
                    display.update(rows, header())
                    with anyio.move_on_after(1.0 if display.live else 0.5):
                        await stop.wait()

            async def deadline() -> None:
                with anyio.move_on_after(duration):
                    await stop.wait()
                stop.set()

            async def signals() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    async for _ in received:
                        interrupted = True
                        stop.set()
                        return

            if not display.live:
                print(
                    f"demo: {len(SCENARIOS) + len(CUPED_TWINS)} experiments on {redact_url(db.url)}; "
                    f"running for {duration:.0f} s",
                    file=out,
                    flush=True,
                )
                listed: list[tuple[str, str, str]] = [(s.name, s.story, s.expected) for s in SCENARIOS]
                listed += [(t.name, t.story, t.expected) for t in CUPED_TWINS]
                for name, story, expected in listed:
                    print(f"scenario      {name:<16} {story}  (expected: {expected})", file=out, flush=True)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(signals)
                    tg.start_soon(daemon.run, stop)
                    await daemon.http_ready.wait()
                    if not display.live:
                        print(
                            f"dashboard/API: http://127.0.0.1:{daemon.http_port}/  sign in with the token "
                            f"{operator_token} (paste it into the sign-in form; for promote/roll back, also "
                            "under 'Operator token')",
                            file=out,
                            flush=True,
                        )
                    tg.start_soon(simulator.run, stop)
                    tg.start_soon(manual_rollbacks, pool, stop)
                    tg.start_soon(refresh)
                    await deadline()
                    tg.cancel_scope.deadline = anyio.current_time() + settings.shutdown_grace + 2
                rows = await pool.fetch(STATUS_QUERY)
            finally:
                await pool.close()
            if display.live:
                display.update(rows, header())
            for line in summary_lines(rows):
                print(line, file=out)
            print(f"\nnotifications delivered to the local sink: {sink.count}", file=out)
            print(
                f"dashboard/API was at http://127.0.0.1:{daemon.http_port}/ and the database at {redact_url(db.url)}",
                file=out,
            )
            print(
                "(both were throw-away and are gone now; run `autopromote run` with DATABASE_URL for real use)"
                if db.embedded is not None
                else "",
                file=out,
                flush=True,
            )
    finally:
        await runner.cleanup()
    if interrupted:
        print("stopped by Ctrl-C before the end; the summary above is where things stood", file=out, flush=True)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        raise CliError("--duration must be a positive number of seconds")
    # The demo's own screen is the output; keep the worker's logs to warnings unless asked otherwise.
    from worker.logging import configure_logging

    configure_logging("warning", "console")
    structlog.get_logger("worker.demo").debug("demo.start", duration=args.duration)

    async def go() -> int:
        return await run_demo(args.duration, database_url=args.database_url)

    return _run_async(go)


def _register(sub: Any) -> None:
    p = sub.add_parser("demo", help="watch every path of the product live, on a throw-away embedded PostgreSQL")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    p.add_argument("--database-url", default=None, help="use this (empty) database instead of the embedded server")
    p.set_defaults(handler=cmd_demo)


register(_register)
