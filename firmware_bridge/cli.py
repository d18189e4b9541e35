"""firmware-bridge run -c FILE | check -c FILE | simulate [...]  (also python -m firmware_bridge).

Exit codes as the agent's: 0 success, 2 usage or config error (a missing file too),
1 other failure. SIGTERM/SIGINT stop `run` gracefully; SIGUSR1 prints its figures
as one JSON line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from edge_agent.errors import ConfigError
from firmware_bridge.config import BridgeConfig, load_config

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firmware-bridge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run in the foreground"), ("check", "validate a config")):
        s = sub.add_parser(name, help=text)
        s.add_argument("-c", "--config", required=True, metavar="FILE")
    s = sub.add_parser("simulate", help="a simulated board writing frames into a new pty")
    s.add_argument("--id", default="sim1")
    s.add_argument("--rate", type=float, default=10.0, help="frames per second (default 10)")
    s.add_argument("--format", choices=("json", "kv", "cobs_cbor"), default="json")
    s.add_argument("--no-checksum", action="store_true", help="text frames without *HH")
    s.add_argument("--clock", choices=("uptime_ms", "board", "none"), default="uptime_ms")
    s.add_argument("--noise", type=float, default=0.01, help="chance per frame of line noise")
    s.add_argument("--dropout", type=float, default=0.005, help="chance per frame of a lost frame")
    s.add_argument("--drift-ppm", type=float, default=50.0, help="board clock error")
    s.add_argument("--count", type=int, default=None, help="stop after this many frames")
    s.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    s.add_argument("--link", default=None, help="keep a symlink at this path to the pty")
    s.add_argument("--udp", default=None, metavar="HOST:PORT", help="send datagrams instead")
    s.add_argument("--seed", type=int, default=None)
    return p


async def _run(cfg: BridgeConfig) -> int:
    from firmware_bridge.bridge import Bridge

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bridge = Bridge(cfg)

    def print_health() -> None:
        print(json.dumps(bridge.health()), file=sys.stderr, flush=True)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, print_health)
    async with bridge:
        done = asyncio.create_task(bridge.done.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait((done, stopping), return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        stopping.cancel()
    return 1 if bridge.error is not None else 0


async def _simulate(args: argparse.Namespace) -> int:
    from firmware_bridge.simulator import SimulatedBoard

    board = SimulatedBoard(
        args.id,
        rate=args.rate,
        format=args.format,
        checksum=not args.no_checksum,
        clock=args.clock,
        noise=args.noise,
        dropout=args.dropout,
        drift_ppm=args.drift_ppm,
        seed=args.seed,
        link=args.link,
    )
    loop = asyncio.get_running_loop()
    if args.udp:
        host, _, port = args.udp.rpartition(":")
        address = (host or "127.0.0.1", int(port))

        async def pace() -> None:
            i = 0
            start = loop.time()
            while args.count is None or i < args.count:
                if args.duration is not None and loop.time() - start >= args.duration:
                    break
                await asyncio.sleep(max(0.0, start + i / args.rate - loop.time()))
                board.send_udp(address)
                i += 1

        work = asyncio.create_task(pace())
    else:
        print(board.open(), flush=True)
        work = asyncio.create_task(board.run(count=args.count, duration=args.duration))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, work.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await work
    print(
        json.dumps(
            {
                "sent": board.sent,
                "lost": board.lost,
                "noisy": board.noisy,
                "overflow": board.overflow,
            }
        ),
        file=sys.stderr,
    )
    board.__exit__()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        logging.basicConfig(level=logging.WARNING)
        return asyncio.run(_simulate(args))
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"firmware-bridge: {e}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: ok")
        return 0
    logging.basicConfig(
        level=cfg.bridge.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_run(cfg))
    except KeyboardInterrupt:
        return 0
