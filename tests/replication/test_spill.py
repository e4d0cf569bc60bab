"""Large responses: a body with a size limit (metadata, which the walk parses from
memory) stays in memory above the spill threshold; one without a limit (content) is
spilled to a file. Through a real nginx, over HTTP/1.1 and over HTTP/2 (TLS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from conftest import NginxFactory
from nginx import TestCerts

from ostreefs.replication.http1 import Request, Response
from ostreefs.replication.tls import TlsSettings
from ostreefs.replication.transport import Endpoint, Transport


@pytest.mark.parametrize("http2", [False, True])
def test_only_unlimited_responses_are_spilled(tmp_path: Path, nginx: NginxFactory,
                                              tls_certs: TestCerts, http2: bool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(4 << 20)  # more than one receive buffer
    (root / "blob").write_bytes(data)
    server = nginx(root, tls=tls_certs.tls() if http2 else None, http2=http2)
    tls = TlsSettings(ca_path=str(tls_certs.ca)) if http2 else TlsSettings()
    spill = tmp_path / "spill"
    spill.mkdir()
    got: dict[bool, Response | BaseException] = {}
    fatal: list[BaseException] = []

    async def main() -> None:
        async with Transport(Endpoint(server.url, tls=tls), spill_dir=str(spill),
                             on_fatal=fatal.append, spill_threshold=1024) as t:
            for limited in (True, False):
                done = trio.Event()

                def ok(req: Request, resp: Response, limited: bool = limited,
                       done: trio.Event = done) -> None:
                    got[limited] = resp
                    done.set()

                def bad(req: Request, err: BaseException, limited: bool = limited,
                        done: trio.Event = done) -> None:
                    got[limited] = err
                    done.set()

                t.objects.submit(Request("blob", ok, bad, priority=0,
                                         max_size=8 << 20 if limited else None))
                await done.wait()

    trio.run(main)
    assert not fatal
    kept, spilled = got[True], got[False]
    assert isinstance(kept, Response) and isinstance(spilled, Response)
    assert kept.status == 200 and kept.body == data and kept.spill is None
    assert spilled.status == 200 and spilled.body is None and spilled.spill is not None
    assert Path(spilled.spill).read_bytes() == data
