"""Pulls from servers that lie, break or stall are refused cleanly.

Each case serves a damaged copy of a good archive repository (through nginx, or through
:class:`badserver.BadServer` for faults a static server cannot produce) and checks that
``ostreefs pull`` fails with a one-line message saying what is wrong, no ref moves, no
unverified object is left under ``objects/``, and both fscks pass afterwards
(:func:`pullcheck.assert_refused`).  Where it makes sense the oracle is run too, to show
the damage is real (ostree refuses as well).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from badserver import BadServer
from gpgkeys import TestKey
from nginx import Nginx
from pullcheck import (
    assert_fsck_ok,
    assert_refused,
    copy_repo,
    flip_byte,
    make_client,
    make_server_repo,
    object_files,
    objects_of_type,
    pull,
    refs_of,
    served_object,
    small_tree,
)
from support import Tool

from ostreefs.store.objects import Commit, DirTree

NginxFactory = Callable[..., Nginx]

#: The remote option that bounds how long a pull waits for a silent server (seconds).
#: H2's pull engine reads it from the remote config; the stall test sets it short.
TIMEOUT_SET = "timeout=2"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("bad-servers")
    return make_server_repo(ostree, base / "good", small_tree(base))


@pytest.fixture
def served(tmp_path: Path, good: tuple[Path, str]) -> Path:
    """A private copy of the good server repository, for one test to damage."""
    return copy_repo(good[0], tmp_path / "served")


def _largest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: p.stat().st_size)


def _url_path(repo: Path, obj: Path) -> str:
    return "/" + obj.relative_to(repo).as_posix()


def _check(ostree: Tool, ostreefs: Tool, tmp_path: Path, url: str, *words: str,
           sets: tuple[str, ...] = (), oracle: bool = True) -> str:
    client = make_client(ostreefs, tmp_path / "client", url, *sets)
    before = refs_of(client)
    proc = pull(ostreefs, client, "origin", "main")
    msg = assert_refused(proc, client, before, ostree, ostreefs, *words)
    if oracle:
        other = make_client(ostree, tmp_path / "oracle-client", url)
        assert pull(ostree, other, "origin", "main").returncode != 0, "ostree accepted it"
    return msg


def test_good_server_pulls(tmp_path: Path, ostree: Tool, ostreefs: Tool, served: Path,
                           good: tuple[Path, str], nginx: NginxFactory) -> None:
    """The control: the undamaged copy pulls, so each failure below is the damage's."""
    server = nginx(served)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    proc = pull(ostreefs, client, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert refs_of(client) == {"refs/remotes/origin/main": good[1]}
    assert_fsck_ok(ostree, ostreefs, client)


def test_flipped_byte_in_file_object(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                     served: Path, nginx: NginxFactory) -> None:
    victim = _largest(objects_of_type(served, "filez"))
    flip_byte(victim)
    server = nginx(served)
    _check(ostree, ostreefs, tmp_path, server.url, "checksum", "corrupt", "mismatch")
    client = tmp_path / "client"
    name = victim.relative_to(served / "objects").as_posix()
    assert name.replace(".filez", ".file") not in object_files(client)
    assert name not in object_files(client)


def test_flipped_byte_in_dirtree(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                 served: Path, nginx: NginxFactory) -> None:
    victim = _largest(objects_of_type(served, "dirtree"))
    flip_byte(victim)
    server = nginx(served)
    _check(ostree, ostreefs, tmp_path, server.url, "checksum", "corrupt", "mismatch")
    assert victim.relative_to(served / "objects").as_posix() not in object_files(
        tmp_path / "client")


def test_flipped_byte_in_transit(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                 served: Path) -> None:
    """The file on the server is fine; the bytes on the wire are not (a bad proxy)."""
    with BadServer(served, match=lambda p: p.endswith(".filez"), fault="flip") as bad:
        _check(ostree, ostreefs, tmp_path, bad.url, "checksum", "corrupt", "mismatch")
        assert bad.faulted


def test_truncated_response(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                            served: Path) -> None:
    victim = _largest(objects_of_type(served, "filez"))
    with BadServer(served, {_url_path(served, victim): "truncate"}) as bad:
        _check(ostree, ostreefs, tmp_path, bad.url)
        assert _url_path(served, victim) in bad.faulted
    assert victim.relative_to(served / "objects").as_posix() not in object_files(
        tmp_path / "client")


def test_object_missing_on_server(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                  served: Path, nginx: NginxFactory) -> None:
    _largest(objects_of_type(served, "filez")).unlink()
    server = nginx(served)
    _check(ostree, ostreefs, tmp_path, server.url, "404", "not found", "missing", "no such")


def test_summary_names_commit_the_server_lacks(tmp_path: Path, ostree: Tool,
                                               ostreefs: Tool, served: Path,
                                               good: tuple[Path, str],
                                               nginx: NginxFactory) -> None:
    served_object(served, good[1], "commit").unlink()
    server = nginx(served)
    _check(ostree, ostreefs, tmp_path, server.url, "404", "not found", "missing", "no such",
           good[1][:10])


def _plant_dirtree_entry(repo: Path, commit: str, name: str, ostree: Tool) -> str:
    """Make ``main`` a self-consistent commit whose root dirtree holds file ``name``."""
    c = Commit.from_bytes(served_object(repo, commit, "commit").read_bytes())
    root = DirTree.from_bytes(served_object(repo, c.root_tree, "dirtree").read_bytes())
    files = dict(root.files)
    files[name] = next(iter(files.values()))
    bad = DirTree.build(files, {n: (t, m) for n, t, m in root.dirs})
    data = bad.to_bytes()
    p = served_object(repo, bad.checksum(), "dirtree")
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    nc = Commit(root_tree=bad.checksum(), root_meta=c.root_meta, subject="sneaky",
                timestamp=c.timestamp + 1, parent=commit)
    p = served_object(repo, nc.checksum(), "commit")
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(nc.to_bytes())
    (repo / "refs" / "heads" / "main").write_text(nc.checksum() + "\n")
    ostree("summary", "-u", f"--repo={repo}")
    return nc.checksum()


@pytest.mark.parametrize("name", ["../x", "..", "a/b"])
def test_dirtree_with_bad_name(tmp_path: Path, ostree: Tool, ostreefs: Tool, served: Path,
                               good: tuple[Path, str], nginx: NginxFactory,
                               name: str) -> None:
    _plant_dirtree_entry(served, good[1], name, ostree)
    server = nginx(served)
    _check(ostree, ostreefs, tmp_path, server.url, "name", "invalid", "malformed", "dirtree")
    assert not (tmp_path / "x").exists()


def test_server_stalls_mid_body(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                served: Path) -> None:
    victim = _largest(objects_of_type(served, "filez"))
    with BadServer(served, {_url_path(served, victim): "stall"}) as bad:
        t0 = time.monotonic()
        _check(ostree, ostreefs, tmp_path, bad.url, "timed out", "timeout",
               sets=(TIMEOUT_SET,), oracle=False)
        elapsed = time.monotonic() - t0
        assert _url_path(served, victim) in bad.faulted
    assert elapsed < 60, f"the stall was not cut short ({elapsed:.0f}s)"


# -- signatures -------------------------------------------------------------------------


def _signed_server(ostree: Tool, base: Path, key: TestKey | None,
                   summary_key: TestKey | None = None) -> Path:
    args = [f"--gpg-sign={key.key_id}", f"--gpg-homedir={key.home}"] if key else []
    repo, _ = make_server_repo(ostree, base / "signed", small_tree(base, seed=22), "main",
                               *args)
    if summary_key is not None:
        ostree("summary", "-u", f"--repo={repo}", f"--gpg-sign={summary_key.key_id}",
               f"--gpg-homedir={summary_key.home}")
    return repo


def _check_gpg(ostree: Tool, ostreefs: Tool, tmp_path: Path, url: str, trusted: TestKey,
               *words: str, sets: tuple[str, ...] = ()) -> None:
    client = make_client(ostreefs, tmp_path / "client", url, *sets,
                         gpg_import=trusted.public_gpg)
    before = refs_of(client)
    proc = pull(ostreefs, client, "origin", "main")
    assert_refused(proc, client, before, ostree, ostreefs, *words)
    assert not objects_of_type(client, "file"), "content fetched before the signature check"
    oracle = make_client(ostree, tmp_path / "oracle", url, *sets,
                         gpg_import=trusted.public_gpg)
    assert pull(ostree, oracle, "origin", "main").returncode != 0, "ostree accepted it"


def test_signed_by_trusted_key_pulls(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                     signing_key: TestKey, nginx: NginxFactory) -> None:
    """The control for the signature cases: the right key verifies."""
    server = nginx(_signed_server(ostree, tmp_path, signing_key, signing_key))
    client = make_client(ostreefs, tmp_path / "client", server.url,
                         "gpg-verify-summary=true", gpg_import=signing_key.public_gpg)
    proc = pull(ostreefs, client, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert list(refs_of(client)) == ["refs/remotes/origin/main"]
    assert_fsck_ok(ostree, ostreefs, client)


def test_commit_signed_by_unknown_key(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                      signing_key: TestKey, other_key: TestKey,
                                      nginx: NginxFactory) -> None:
    server = nginx(_signed_server(ostree, tmp_path, other_key))
    _check_gpg(ostree, ostreefs, tmp_path, server.url, signing_key,
               "signature", "gpg", "key")


def test_unsigned_commit_with_gpg_verify(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                         signing_key: TestKey, nginx: NginxFactory) -> None:
    server = nginx(_signed_server(ostree, tmp_path, None))
    _check_gpg(ostree, ostreefs, tmp_path, server.url, signing_key,
               "signature", "gpg", "signed")


def test_summary_signed_by_unknown_key(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                       signing_key: TestKey, other_key: TestKey,
                                       nginx: NginxFactory) -> None:
    server = nginx(_signed_server(ostree, tmp_path, signing_key, other_key))
    _check_gpg(ostree, ostreefs, tmp_path, server.url, signing_key,
               "signature", "gpg", "summary", sets=("gpg-verify-summary=true",))


def test_tampered_signed_summary(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                 signing_key: TestKey, nginx: NginxFactory) -> None:
    repo = _signed_server(ostree, tmp_path, signing_key, signing_key)
    flip_byte(repo / "summary", offset=len((repo / "summary").read_bytes()) - 3)
    server = nginx(repo)
    _check_gpg(ostree, ostreefs, tmp_path, server.url, signing_key,
               "signature", "gpg", "summary", sets=("gpg-verify-summary=true",))


@pytest.mark.parametrize("evil", ["../../../../ESCAPE", "heads/../../ESCAPE"])
def test_mirror_refuses_summary_ref_that_escapes(tmp_path: Path, ostree: Tool,
                                                  ostreefs: Tool, served: Path,
                                                  good: tuple[Path, str],
                                                  nginx: NginxFactory, evil: str) -> None:
    """A whole-repo mirror takes ref names from the server's summary: a name that is a
    path out of refs/ (the server's choice) is refused before anything is written."""
    from ostreefs.store.objects import Summary, SummaryRef

    summary = Summary.from_bytes((served / "summary").read_bytes())
    target = tmp_path / "client" / "refs" / "heads" / evil.replace("ESCAPE", "")
    landing = (target / "pwned").resolve()
    name = evil.replace("ESCAPE", "pwned")
    bad = SummaryRef(name, good[1], summary.refs[0].size, summary.refs[0].metadata)
    (served / "summary").write_bytes(Summary(summary.refs + (bad,), summary.metadata).to_bytes())
    server = nginx(served)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    before = refs_of(client)
    proc = pull(ostreefs, client, "--mirror", "origin")
    assert_refused(proc, client, before, ostree, ostreefs, "invalid ref")
    assert not landing.exists(), f"a ref was written outside the repo: {landing}"
    assert not list(tmp_path.rglob("pwned")), "a file named by the server was written"
