"""The nginx configuration the README documents is the one the tests run, and it does
what the README says: objects cacheable forever, refs/summary/config revalidated,
repository-local state hidden, nothing but GET and HEAD."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from nginx import Nginx, server_block
from pullcheck import make_server_repo, small_tree
from support import Tool

NginxFactory = Callable[..., Nginx]
README = Path(__file__).resolve().parents[2] / "README.md"


def _directives(text: str) -> list[str]:
    """Non-empty lines without comments, stripped: what nginx reads."""
    out = []
    for ln in text.splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            out.append(ln)
    return out


def _readme_server_block() -> list[str]:
    text = README.read_text()
    start = text.index("```nginx")
    lines = _directives(text[start + 8:text.index("```", start + 8)])
    first = lines.index("autoindex off;")
    last = lines.index("location = /.lock { return 404; }")
    return lines[first:last + 1]


def test_readme_documents_the_tested_server_block() -> None:
    tested = _directives(server_block("/srv/repo", "443"))
    documented = _readme_server_block()
    assert len(documented) > 10
    first = tested.index(documented[0])
    assert tested[first:first + len(documented)] == documented


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_cache_headers_and_hidden_state(tmp_path: Path, ostree: Tool,
                                        nginx: NginxFactory) -> None:
    repo, commit = make_server_repo(ostree, tmp_path / "served", small_tree(tmp_path))
    (repo / "state").mkdir(exist_ok=True)
    (repo / "state" / "secret").write_text("x")
    server = nginx(repo)
    obj = f"/objects/{commit[:2]}/{commit[2:]}.commit"
    status, headers = _get(server.url + obj)
    assert status == 200 and "immutable" in headers["Cache-Control"], headers
    for path in ("/summary", "/config", "/refs/heads/main"):
        status, headers = _get(server.url + path)
        assert status == 200 and headers["Cache-Control"] == "no-cache", (path, headers)
    assert _get(server.url + "/state/secret")[0] == 404
    assert _get(server.url + "/.lock")[0] == 404
    assert _get(server.url + obj, method="HEAD")[0] == 200
    assert _get(server.url + obj, method="DELETE")[0] in (403, 405)
    assert _get(server.url + "/refs/heads/main", method="PUT")[0] in (403, 405)
