"""Pulls over HTTPS from nginx: trusted CA, client certificates, pinned keys.

Certificates come from the session's :class:`nginx.TestCerts`: ``ca`` signed the
server and client certificates, an unrelated ``other_ca`` signed ``other_server``, and
both server certificates are valid for 127.0.0.1.  The positive cases also run the real
ostree with the same remote configuration, so the options mean what ostree means by
them; the pin (``tls-pinned-pubkey``, curl's syntax) is ostreefs's own addition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from nginx import Nginx, TestCerts, pubkey_pin
from pullcheck import (
    assert_fsck_ok,
    assert_refused,
    make_client,
    make_server_repo,
    pull,
    refs_of,
    small_tree,
)
from support import Tool

NginxFactory = Callable[..., Nginx]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("tls")
    return make_server_repo(ostree, base / "served", small_tree(base, seed=23))


def _pulls(tool: Tool, client: Path, commit: str, ostree: Tool, ostreefs: Tool) -> None:
    proc = pull(tool, client, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert refs_of(client) == {"refs/remotes/origin/main": commit}
    assert_fsck_ok(ostree, ostreefs, client)


@pytest.mark.parametrize("http2", [False, True])
def test_trusted_ca_only(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                         served: tuple[Path, str], tls_certs: TestCerts,
                         nginx: NginxFactory, http2: bool) -> None:
    server = nginx(served[0], tls=tls_certs.tls(), http2=http2)
    protocols = {}
    for tool in (ostreefs, ostree):
        server.clear_log()
        client = make_client(tool, tmp_path / f"client-{tool.name}", server.url,
                             f"tls-ca-path={tls_certs.ca}")
        _pulls(tool, client, served[1], ostree, ostreefs)
        protocols[tool.name] = {e.path: e.protocol for e in server.log()}
    expected = "HTTP/2.0" if http2 else "HTTP/1.1"
    assert set(protocols["ostree"].values()) == {expected}
    # ostreefs reads the summary through its HTTP/2-capable client; objects go through
    # its pipelined HTTP/1.1 pool by design (faster than HTTP/2 in Python for many small
    # files), so only the summary's protocol is asserted here.
    assert protocols["ostreefs"]["/summary"] == expected


def test_untrusted_server_certificate_refused(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                              served: tuple[Path, str],
                                              tls_certs: TestCerts,
                                              nginx: NginxFactory) -> None:
    """Our CA is in no system store; and a tls-ca-path of another CA does not trust it."""
    server = nginx(served[0], tls=tls_certs.tls())
    for i, sets in enumerate([(), (f"tls-ca-path={tls_certs.other_ca}",)]):
        client = make_client(ostreefs, tmp_path / f"client{i}", server.url, *sets)
        proc = pull(ostreefs, client, "origin", "main")
        assert_refused(proc, client, {}, ostree, ostreefs, "certificate", "tls", "ssl")
        assert not server.paths(), "a request got through an untrusted TLS handshake"
        oracle = make_client(ostree, tmp_path / f"oracle{i}", server.url, *sets)
        assert pull(ostree, oracle, "origin", "main").returncode != 0


def test_tls_permissive_accepts_untrusted(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                          served: tuple[Path, str], tls_certs: TestCerts,
                                          nginx: NginxFactory) -> None:
    server = nginx(served[0], tls=tls_certs.tls())
    client = make_client(ostreefs, tmp_path / "client", server.url, "tls-permissive=true")
    _pulls(ostreefs, client, served[1], ostree, ostreefs)


def test_client_certificate(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                            served: tuple[Path, str], tls_certs: TestCerts,
                            nginx: NginxFactory) -> None:
    server = nginx(served[0], tls=tls_certs.tls(client_auth=True))
    ca = f"tls-ca-path={tls_certs.ca}"
    # Without a client certificate nginx answers 400 to everything.
    client = make_client(ostreefs, tmp_path / "nocert", server.url, ca)
    proc = pull(ostreefs, client, "origin", "main")
    assert_refused(proc, client, {}, ostree, ostreefs, "400", "certificate", "bad request")
    assert set(server.paths(status=200)) == set()
    # With one, both tools pull.
    certs = (f"tls-client-cert-path={tls_certs.client}",
             f"tls-client-key-path={tls_certs.client_key}")
    for tool in (ostreefs, ostree):
        client = make_client(tool, tmp_path / f"cert-{tool.name}", server.url, ca, *certs)
        _pulls(tool, client, served[1], ostree, ostreefs)


def test_pinned_key_matches(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                            served: tuple[Path, str], tls_certs: TestCerts,
                            nginx: NginxFactory) -> None:
    server = nginx(served[0], tls=tls_certs.tls(), http2=True)
    # Several pins may be given; one matching is enough.
    pins = f"{pubkey_pin(tls_certs.other_server)};{pubkey_pin(tls_certs.server)}"
    client = make_client(ostreefs, tmp_path / "client", server.url,
                         f"tls-ca-path={tls_certs.ca}", f"tls-pinned-pubkey={pins}")
    _pulls(ostreefs, client, served[1], ostree, ostreefs)


def test_wrong_pinned_key_refused(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                  served: tuple[Path, str], tls_certs: TestCerts,
                                  nginx: NginxFactory) -> None:
    """A mirror with a certificate the client trusts, but not the pinned key."""
    server = nginx(served[0], tls=tls_certs.tls(other=True))
    trust_both = f"tls-ca-path={tls_certs.both_cas}"
    # Control: trusted without a pin, so the refusal below is the pin's doing.
    control = make_client(ostreefs, tmp_path / "control", server.url, trust_both)
    _pulls(ostreefs, control, served[1], ostree, ostreefs)
    server.clear_log()
    client = make_client(ostreefs, tmp_path / "client", server.url, trust_both,
                         f"tls-pinned-pubkey={pubkey_pin(tls_certs.server)}")
    proc = pull(ostreefs, client, "origin", "main")
    assert_refused(proc, client, {}, ostree, ostreefs, "pin")
    assert not (set(server.paths()) - {"/config", "/summary", "/summary.sig"}), \
        "objects were fetched from an unpinned server"
