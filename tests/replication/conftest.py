"""Fixtures for the replication tests: real nginx servers and test TLS certificates.

``nginx(root, tls=None, http2=False, requests_per_second=None)`` starts an nginx serving
``root`` on 127.0.0.1 (the README's configuration) and returns a :class:`nginx.Nginx`
(``.url``, ``.paths()``, ``.object_paths()``, ``.clear_log()``); every server started is
stopped at the end of the test.  ``signing_key`` / ``other_key`` are gpgkeys' two
throw-away GPG keys.  ``tls_certs`` is a :class:`nginx.TestCerts` made once per session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpgkeys import other_key, signing_key  # noqa: E402, F401  (fixtures, once per module)
from nginx import TLS, Nginx, TestCerts, make_test_certs  # noqa: E402

NginxFactory = Callable[..., Nginx]


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_test_certs(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxFactory]:
    started: list[Nginx] = []

    def start(root: Path | str, *, tls: TLS | None = None, http2: bool = False,
              requests_per_second: int | None = None) -> Nginx:
        server = Nginx(root, tmp_path_factory.mktemp("nginx"), tls=tls, http2=http2,
                       requests_per_second=requests_per_second)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
