"""upgrade, switch, set-default, rollback, set-origin, config-diff, status --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Tool, assert_clean_failure
from sysroot_helpers import (
    OSNAME,
    REF,
    deployments,
    make_local_etc_changes,
    make_os_tree,
    remove_sysroot,
)


def _commit(ostree: Tool, sr: Path, tree: Path, version: int, branch: str = REF,
            repo: Path | None = None) -> str:
    return str(ostree(f"--repo={repo or sr / 'ostree/repo'}", "commit", f"--branch={branch}",
                      f"--timestamp=@{1700000000 + version}",
                      f"--add-metadata-string=version={version}.0", str(tree)
                      ).stdout.strip())


@pytest.fixture
def twin(tmp_path: Path, ostree: Tool, ostreefs: Tool) -> Iterator[tuple[Path, Path]]:
    """Two sysroots with v1 deployed, one by each tool."""
    a, b = tmp_path / "a", tmp_path / "b"
    tree = make_os_tree(tmp_path / "t1", 1)
    for tool, sr in ((ostree, a), (ostreefs, b)):
        sr.mkdir()
        tool("admin", "init-fs", str(sr))
        tool("admin", f"--sysroot={sr}", "os-init", OSNAME)
        _commit(ostree, sr, tree, 1)
        tool("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", "--karg=root=/dev/vda",
             REF)
    yield a, b
    remove_sysroot(a)
    remove_sysroot(b)


def _status(tool: Tool, sr: Path) -> str:
    return str(tool("admin", f"--sysroot={sr}", "status").stdout)


def test_upgrade_switch_set_default_rollback(twin: tuple[Path, Path], ostree: Tool,
                                             ostreefs: Tool, tmp_path: Path) -> None:
    _, sr = twin
    adm = ["admin", f"--sysroot={sr}"]
    out = ostreefs(*adm, "upgrade", f"--os={OSNAME}").stdout
    assert out == "No update available.\n"
    c2 = _commit(ostree, sr, make_os_tree(tmp_path / "t2", 2, kernel=b"K2"), 2)
    assert ostreefs(*adm, "upgrade", f"--os={OSNAME}", "--pull-only").stdout == ""
    out = ostreefs(*adm, "upgrade", f"--os={OSNAME}").stdout
    assert "bootconfig swap: yes" in out
    st = _status(ostree, sr)
    assert st.splitlines()[0].startswith(f"  {OSNAME} {c2}.0")
    assert "Version: 2.0" in st.splitlines()[1]
    # kargs came along from the merge deployment
    assert all("root=/dev/vda" in p.read_text()
               for p in (sr / "boot/loader/entries").iterdir())

    c3 = _commit(ostree, sr, make_os_tree(tmp_path / "t3", 3), 3,
                 branch="myos/x86_64/testing")
    ostreefs(*adm, "switch", f"--os={OSNAME}", "myos/x86_64/testing")
    st = _status(ostree, sr)
    assert st.splitlines()[0].startswith(f"  {OSNAME} {c3}.0")
    assert "origin refspec: myos/x86_64/testing" in st
    assert len(deployments(sr)) == 2

    ostreefs(*adm, "set-default", "1")
    st = _status(ostree, sr)
    assert st.splitlines()[0].startswith(f"  {OSNAME} {c2}.0")
    assert _status(ostreefs, sr) == st
    ostreefs(*adm, "rollback")
    assert _status(ostree, sr).splitlines()[0].startswith(f"  {OSNAME} {c3}.0")

    data = json.loads(ostreefs(*adm, "status", "--json").stdout)
    assert [d["checksum"] for d in data["deployments"]] == [c3, c2]
    assert data["deployments"][0]["origin"] == "myos/x86_64/testing"
    assert data["deployments"][1]["version"] == "2.0"

    # A downgrade is refused unless asked for.
    ostree(f"--repo={sr}/ostree/repo", "reset", "myos/x86_64/testing", f"{c3}^",
           check=False)
    older = _commit(ostree, sr, make_os_tree(tmp_path / "t0", 1, kernel=b"K0"), 0,
                    branch="myos/x86_64/testing")
    proc = ostreefs(*adm, "upgrade", f"--os={OSNAME}", check=False)
    assert_clean_failure(proc)
    assert "chronologically older" in proc.stderr
    ostreefs(*adm, "upgrade", f"--os={OSNAME}", "--allow-downgrade")
    assert _status(ostree, sr).splitlines()[0].startswith(f"  {OSNAME} {older}.0")


def test_set_origin_and_config_diff_like_ostree(twin: tuple[Path, Path], ostree: Tool,
                                                ostreefs: Tool) -> None:
    a, b = twin
    for tool, sr in ((ostree, a), (ostreefs, b)):
        tool("admin", f"--sysroot={sr}", "set-origin", "--index=0",
             "--set=gpg-verify=false", "myremote", "http://example.invalid/repo",
             "myos/x86_64/stable")
        make_local_etc_changes(deployments(sr)[0])
    origins = [(deployments(sr)[0].parent / f"{deployments(sr)[0].name}.origin").read_text()
               for sr in (a, b)]
    assert origins[0] == origins[1]
    assert "refspec=myremote:myos/x86_64/stable" in origins[1]
    for key in ("url", "gpg-verify"):
        got = [ostree(f"--repo={sr}/ostree/repo", "config", "get",
                      f'remote "myremote".{key}').stdout for sr in (a, b)]
        assert got[0] == got[1]
    assert _status(ostree, a) == _status(ostree, b) == _status(ostreefs, b)
    diffs = [tool("admin", f"--sysroot={sr}", "config-diff", f"--os={OSNAME}").stdout
             for tool, sr in ((ostree, a), (ostreefs, b), (ostreefs, a))]
    assert sorted(diffs[0].splitlines()) == sorted(diffs[1].splitlines())
    assert sorted(diffs[2].splitlines()) == sorted(diffs[0].splitlines())
    assert "M    app.conf" in diffs[1] and "D    hostname" in diffs[1]


def test_upgrade_pulls_from_the_origin_remote(tmp_path: Path, ostree: Tool,
                                              ostreefs: Tool) -> None:
    """An origin ``REMOTE:REF``: upgrade pulls over HTTP, then deploys the new commit."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    upstream = tmp_path / "upstream"
    ostree("init", f"--repo={upstream}", "--mode=archive")
    _commit(ostree, upstream, make_os_tree(tmp_path / "t1", 1), 1, repo=upstream)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(upstream))
    handler.log_message = lambda *a: None  # type: ignore[assignment,method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sr = tmp_path / "sr"
    try:
        sr.mkdir()
        ostreefs("admin", "init-fs", str(sr))
        ostreefs("admin", f"--sysroot={sr}", "os-init", OSNAME)
        repo = f"--repo={sr}/ostree/repo"
        ostree(repo, "remote", "add", "--no-gpg-verify", "origin",
               f"http://127.0.0.1:{server.server_address[1]}/")
        ostree(repo, "pull", "origin", REF)
        ostreefs("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", f"origin:{REF}")
        c2 = _commit(ostree, upstream, make_os_tree(tmp_path / "t2", 2, kernel=b"K2"), 2,
                     repo=upstream)
        out = ostreefs("admin", f"--sysroot={sr}", "upgrade", f"--os={OSNAME}").stdout
        assert "bootconfig swap: yes" in out
        st = _status(ostree, sr)
        assert st.splitlines()[0] == f"  {OSNAME} {c2}.0"
        assert f"origin refspec: origin:{REF}" in st
        assert _status(ostreefs, sr) == st
        ostree(repo, "fsck")
    finally:
        server.shutdown()
        server.server_close()
        remove_sysroot(sr)
