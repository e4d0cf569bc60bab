"""``ostreefs serve``: real ``ostree pull`` works from it, and it serves nothing else.

Escapes are tried with raw request targets (http.client sends them unnormalised):
``..`` in every spelling, symlinks planted inside the served repository pointing out
of it, repository-local state, listings and writes.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TS_ARG, Tool, assert_clean_failure, init_repo, rev_parse
from treegen import make_tree

SECRET = b"secret outside the repository\n"


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])

    def request(self, target: str, method: str = "GET") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def start_serve(ostreefs: Tool, repo: Path) -> Served:
    proc = ostreefs.popen("serve", f"--repo={repo}", "--port=0", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.stderr else "")
    return Served(proc, line.split(" at ", 1)[1].split()[0])


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> Path:
    base = tmp_path_factory.mktemp("serve")
    repo = init_repo(ostree, base / "repo", "archive")
    tree = make_tree(base / "tree", seed=11)
    ostree("commit", f"--repo={repo}", "-b", "main", "-s", "one", TS_ARG, tree)
    ostree("summary", "-u", f"--repo={repo}")
    (base / "secret").write_bytes(SECRET)
    # Symlinks planted inside the served repository, pointing out of it.
    os.symlink(base / "secret", repo / "refs" / "heads" / "evil")
    os.symlink(base, repo / "objects" / "zz")
    os.symlink(base / "secret", repo / "summary.sig")
    return repo


@pytest.fixture
def server(ostreefs: Tool, served_repo: Path) -> Iterator[Served]:
    s = start_serve(ostreefs, served_repo)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
    s.proc.communicate()


@pytest.mark.parametrize("puller", ["ostree", "ostreefs"])
def test_pull_from_ostreefs_serve(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                  served_repo: Path, server: Served, puller: str) -> None:
    tool = ostree if puller == "ostree" else ostreefs
    dest = init_repo(tool, tmp_path / "dest", "bare-user")
    tool("remote", "add", f"--repo={dest}", "--no-gpg-verify", "origin", server.url)
    tool("pull", f"--repo={dest}", "origin", "main")
    assert rev_parse(ostree, dest, "origin:main") == rev_parse(ostree, served_repo, "main")
    ostree("fsck", f"--repo={dest}")
    ostreefs("fsck", f"--repo={dest}")
    # A second pull finds nothing to do and still succeeds (summary revalidated).
    tool("pull", f"--repo={dest}", "origin", "main")


@pytest.mark.parametrize("target", [
    "/../secret",
    "/objects/../../secret",
    "/%2e%2e/secret",
    "/objects/%2E%2E/%2e%2e/secret",
    "/refs/heads/../../../secret",
    "/refs/heads/evil",            # symlink to a file outside
    "/objects/zz/secret",          # symlinked directory pointing outside
    "/summary.sig",                # symlink at a served name
    "//etc/passwd",
    "/etc/passwd",
    "http://127.0.0.1/../secret",
    "/refs/heads/main%00",
    "/objects/",                   # no listings
    "/refs/heads/",
    "/",
    "/state/",
    "/tmp/",
    "/.lock",
    "/objects/xx/not-an-object",
])
def test_escapes_and_unserved_paths_are_404(server: Served, target: str) -> None:
    status, body = server.request(target)
    assert status == 404, (target, status, body[:200])
    assert SECRET not in body


def test_serves_exactly_pull_files_with_cache_headers(server: Served,
                                                      served_repo: Path) -> None:
    status, body = server.request("/config")
    assert status == 200 and body == (served_repo / "config").read_bytes()
    status, body = server.request("/refs/heads/main")
    assert status == 200 and body == (served_repo / "refs/heads/main").read_bytes()
    obj = next(p for p in (served_repo / "objects").rglob("*.filez"))
    rel = "/" + obj.relative_to(served_repo).as_posix()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        # Keep-alive: two requests on one connection.
        for method in ("HEAD", "GET"):
            conn.request(method, rel)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200
            assert resp.getheader("Cache-Control") == "public, max-age=31536000, immutable"
            assert int(resp.getheader("Content-Length") or -1) == obj.stat().st_size
            assert data == (b"" if method == "HEAD" else obj.read_bytes())
        conn.request("GET", "/summary")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("Cache-Control") == "no-cache"
        etag = resp.getheader("ETag")
        assert etag
        conn.request("GET", "/summary", headers={"If-None-Match": etag})
        resp = conn.getresponse()
        assert resp.status == 304 and resp.read() == b""
    finally:
        conn.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_writes_refused(server: Served, served_repo: Path, method: str) -> None:
    before = (served_repo / "config").read_bytes()
    status, _ = server.request("/config", method)
    assert status == 405
    assert (served_repo / "config").read_bytes() == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stops_cleanly_on_signal(server: Served, sig: signal.Signals) -> None:
    server.proc.send_signal(sig)
    _, err = server.proc.communicate(timeout=10)
    assert server.proc.returncode == 0, err
    assert "Traceback" not in err


def test_refuses_non_archive_repo(tmp_path: Path, ostree: Tool, ostreefs: Tool) -> None:
    repo = init_repo(ostree, tmp_path / "bare", "bare-user")
    proc = ostreefs("serve", f"--repo={repo}", "--port=0", check=False, timeout=30)
    assert_clean_failure(proc)
    assert "archive" in proc.stderr


def test_port_in_use_is_a_clean_error(ostreefs: Tool, served_repo: Path,
                                      server: Served) -> None:
    proc = ostreefs("serve", f"--repo={served_repo}", f"--port={server.port}", check=False,
                    timeout=30)
    assert_clean_failure(proc)
    assert "cannot listen" in proc.stderr
