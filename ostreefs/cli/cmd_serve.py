"""``ostreefs serve``: serve an archive repository over HTTP, read-only, until stopped."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from ostreefs.cli.main import Handler, need_repo
from ostreefs.errors import UsageError


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--port", type=int, default=8080,
                   help="TCP port to listen on; 0 picks a free one (default: 8080)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print one line per request on stderr")
    return run


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from ostreefs.replication.serve import open_server

    if not 0 <= args.port <= 65535:
        raise UsageError(f"invalid port {args.port}")
    server = open_server(need_repo(args), args.bind, args.port,
                         log=_log if args.verbose else None)
    signal.signal(signal.SIGTERM, _stop)
    try:
        print(f"Serving {args.repo} at {server.url} (read-only; Ctrl-C to stop)", flush=True)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
