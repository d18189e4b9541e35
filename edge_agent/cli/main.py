"""`edge-agent` command line (SPEC 6). The only place exceptions become exit codes.

Exit codes: 0 success, 2 usage or config error (a missing config file too),
1 other failure; `status` exits 3 when the agent is not running; `health` exits
0 ok, 1 degraded, 2 failing or unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from edge_agent import __version__
from edge_agent.errors import ConfigError, EdgeAgentError

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(
        self, message: str
    ) -> NoReturn:  # argparse exits 2 on usage errors, as the spec wants
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, got {text}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-agent", description="Store-and-forward MQTT edge agent.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("scaffold", help="write a commented agent.toml and a systemd unit into DIR")
    s.add_argument("dir")

    for name, text in (
        ("check", "validate a config file"),
        ("run", "run in the foreground (what systemd calls)"),
        ("start", "start in the background; returns once it is ready"),
        ("stop", "stop the running agent gracefully"),
        ("status", "whether it runs, its pid and its health summary"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("-c", "--config", required=True, metavar="FILE")
        if name == "run":  # what `start` passes its child: log there, rotated by size
            c.add_argument("--log-file", default=None, metavar="FILE", help=argparse.SUPPRESS)
        if name == "start":
            c.add_argument(
                "--timeout",
                type=_seconds,
                default=30.0,
                metavar="SECONDS",
                help="how long to wait for the agent to be ready (default 30)",
            )

    h = sub.add_parser("health", help="fetch /healthz and print it")
    h.add_argument("url", nargs="?", default=None)
    h.add_argument("-c", "--config", metavar="FILE", default=None)
    h.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="a file holding the bearer token (or set EDGE_HEALTH_TOKEN; with -c, "
        "the config's health.token_file is used)",
    )
    h.add_argument(
        "--token",
        default=None,
        help="the bearer token itself; avoid: every user sees it in the process "
        "list (use --token-file or EDGE_HEALTH_TOKEN)",
    )
    h.add_argument("--timeout", type=float, default=5.0)

    k = sub.add_parser(
        "consume", help="store upstream batches and device status in SQLite or PostgreSQL"
    )
    k.add_argument("--broker", required=True, metavar="HOST:PORT", type=_host_port)
    k.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="a file path, sqlite:///path or postgresql://user@host:port/db",
    )
    k.add_argument(
        "--topic",
        action="append",
        metavar="FILTER",
        help="topic filter, repeatable (default edge/+/batches); add the late and "
        "status topics (e.g. edge/+/status) to store those too",
    )
    k.add_argument(
        "--share",
        default="",
        metavar="GROUP",
        help="subscribe as $share/GROUP/<filter>: consumers in a group split the load",
    )
    k.add_argument("--username", default="")
    k.add_argument("--password-file", default="", metavar="FILE")
    k.add_argument("--tls", action="store_true")
    k.add_argument("--ca-file", default="", metavar="FILE")
    k.add_argument("--cert-file", default="", metavar="FILE")
    k.add_argument("--key-file", default="", metavar="FILE")
    k.add_argument(
        "--client-id",
        default="",
        help="MQTT client id (default: derived from host, broker, topics and db, "
        "one per running consumer); its session survives restarts",
    )
    k.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    d = sub.add_parser("demo", help="simulated sensors -> agent -> upstream, printing batches")
    d.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until Ctrl-C)")
    d.add_argument("--sensors", type=int, default=5)
    d.add_argument("--rate", type=float, default=5.0, help="readings/s per sensor")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "scaffold":
            from edge_agent.cli.scaffold import scaffold

            return scaffold(args.dir)
        if args.command == "check":
            return _check(args.config)
        if args.command == "run":
            from edge_agent.cli.daemon import run

            return run(args.config, args.log_file)
        if args.command == "start":
            from edge_agent.cli.control import start

            return start(args.config, args.timeout)
        if args.command == "stop":
            from edge_agent.cli.control import stop

            return stop(args.config)
        if args.command == "status":
            from edge_agent.cli.control import status

            return status(args.config)
        if args.command == "health":
            from edge_agent.cli.health_client import health

            return health(args.url, args.config, args.token, args.timeout, args.token_file)
        if args.command == "consume":
            return _consume(args)
        if args.command == "demo":
            from edge_agent.cli.demo import demo

            return demo(args.duration, args.sensors, args.rate)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except EdgeAgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def _consume(args: argparse.Namespace) -> int:
    import asyncio

    from edge_agent.consume.consumer import DEFAULT_TOPIC, ConsumeOptions, consume
    from edge_agent.logs import setup_logging
    from edge_agent.mqtt import TlsSettings

    for flag in ("ca_file", "cert_file", "key_file"):
        if getattr(args, flag) and not args.tls:
            print(f"edge-agent consume: --{flag.replace('_', '-')} needs --tls", file=sys.stderr)
            return EXIT_USAGE
    from edge_agent.config import _topic_filter_problem

    for f in args.topic or ():
        why = _topic_filter_problem(f)
        if why:
            print(f"edge-agent consume: --topic {f!r}: {why}", file=sys.stderr)
            return EXIT_USAGE
    if args.share and any(c in args.share for c in "/+#"):
        print(
            f"edge-agent consume: --share {args.share!r}: a group name cannot hold / + or #",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from edge_agent.consume.results import StorageError
    from edge_agent.consume.storage import open_storage

    try:
        storage = open_storage(args.db)  # the URL's form only: not opened or connected yet
    except StorageError as exc:
        print(f"edge-agent consume: {exc}", file=sys.stderr)
        return EXIT_USAGE
    password = ""
    if args.password_file:
        from edge_agent.logs import register_secret

        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            print(
                f"edge-agent consume: --password-file {args.password_file}: {exc}", file=sys.stderr
            )
            return EXIT_USAGE
        register_secret(password)
    setup_logging(args.log_level)
    host, port = args.broker
    opts = ConsumeOptions(
        host=host,
        port=port,
        db=args.db,
        topics=tuple(args.topic or (DEFAULT_TOPIC,)),
        share=args.share,
        username=args.username,
        password=password,
        tls=TlsSettings(args.ca_file, args.cert_file, args.key_file) if args.tls else None,
        client_id=args.client_id,
    )
    asyncio.run(consume(opts, storage))
    return EXIT_OK


def _check(path: str) -> int:
    from edge_agent.config import load_config

    cfg = load_config(path)
    from edge_agent.safety import config_warnings

    for warning in config_warnings(cfg):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    names = ", ".join(p.name for p in cfg.pipelines)
    print(f"{path}: ok (agent {cfg.agent.id}, config {cfg.hash}, pipelines: {names})")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
