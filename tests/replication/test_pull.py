"""``ostreefs pull`` over HTTP from a real nginx: interop with ostree, both ways, and options.

Every case serves an archive repository with nginx (tests/replication/nginx.py) and
reads what was fetched from its access log: an incremental pull asks for exactly the new
objects, ``--subpath`` and ``--commit-metadata-only`` only what they name, a pull after
``fsck --delete`` or with ``--repair`` exactly the damaged objects.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from countcheck import assert_counts_recorded, recorded_walk
from nginx import Nginx
from pullcheck import (
    assert_fsck_ok,
    flip_byte,
    make_client,
    make_server_repo,
    object_files,
    pull,
    refs_of,
    small_tree,
)
from support import TS, Tool, init_repo, repo_snapshot
from treegen import make_big_tree, mutate_tree

from ostreefs.store.objects import Commit, DirTree
from ostreefs.store.repo import Repo
from ostreefs.store.treerecord import record_tree

NginxFactory = Callable[..., Nginx]


def _commit(tool: Tool, repo: Path, ref: str, tree: Path, ts: int, *extra: str) -> str:
    return tool("commit", f"--repo={repo}", "-b", ref, "-s", f"at {ts}",
                f"--timestamp=@{ts}", *extra, tree).stdout.strip()


def _as_served(names: set[str]) -> set[str]:
    return {"/objects/" + (n[:-5] + ".filez" if n.endswith(".file") else n) for n in names}


def _fetched(server: Nginx) -> list[str]:
    return server.object_paths()


@pytest.fixture(scope="module")
def ostree_served(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> tuple[Path, str]:
    """An archive repository built by ostree, with a summary."""
    base = tmp_path_factory.mktemp("pull-ostree-served")
    return make_server_repo(ostree, base / "served", small_tree(base, seed=41))


@pytest.mark.parametrize("mode", ["bare-user", "archive", "bare"])
def test_ostreefs_pulls_ostree_repo(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                    ostree_served: tuple[Path, str], nginx: NginxFactory,
                                    mode: str) -> None:
    repo, commit = ostree_served
    server = nginx(repo)
    ours = make_client(ostreefs, tmp_path / "ours", server.url, mode=mode)
    proc = pull(ostreefs, ours, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.endswith("content written") and "metadata," in line, line
    fetched = _fetched(server)
    assert len(fetched) == len(set(fetched)), "an object was fetched twice"
    assert set(fetched) == _as_served(object_files(repo)) - {
        p for p in _as_served(object_files(repo)) if p.endswith(".commitmeta")}
    theirs = make_client(ostree, tmp_path / "theirs", server.url, mode=mode)
    assert pull(ostree, theirs, "origin", "main").returncode == 0
    assert refs_of(ours) == refs_of(theirs) == {"refs/remotes/origin/main": commit}
    assert object_files(ours) == object_files(theirs)
    if mode == "archive":  # archive keeps the served bytes, as ostree does
        for name in object_files(repo):
            assert (ours / "objects" / name).read_bytes() == \
                (repo / "objects" / name).read_bytes(), name
    assert_fsck_ok(ostree, ostreefs, ours)
    assert ostree("ls", f"--repo={ours}", "-R", "-C", commit).stdout == \
        ostree("ls", f"--repo={theirs}", "-R", "-C", commit).stdout
    assert_counts_recorded(ostree, ours, commit)  # for a first mount (store.treecount)
    assert not (ours / "state" / f"{commit}.commitpartial").exists()
    assert [p.name for p in (ours / "tmp").iterdir() if p.name.startswith("staging")] == []


def test_ostree_pulls_ostreefs_repo(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                    nginx: NginxFactory) -> None:
    repo, commit = make_server_repo(ostreefs, tmp_path / "served", small_tree(tmp_path, 42))
    server = nginx(repo)
    for tool, mode in ((ostree, "bare-user"), (ostreefs, "archive")):
        client = make_client(tool, tmp_path / f"client-{tool.name}", server.url, mode=mode)
        assert pull(tool, client, "origin", "main").returncode == 0
        assert refs_of(client) == {"refs/remotes/origin/main": commit}
        assert_fsck_ok(ostree, ostreefs, client)


def test_signed_commit_and_summary(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                   nginx: NginxFactory, signing_key: object) -> None:
    """gpg-verify and gpg-verify-summary on: a signed repo pulls, an unsigned one not."""
    key = signing_key
    home, key_id, pub = key.home, key.key_id, key.public_gpg  # type: ignore[attr-defined]
    tree = small_tree(tmp_path, 43)
    signed, commit = make_server_repo(ostree, tmp_path / "signed", tree, "main",
                                      f"--gpg-sign={key_id}", f"--gpg-homedir={home}")
    ostreefs("summary", "-u", f"--repo={signed}", f"--gpg-sign={key_id}",
             f"--gpg-homedir={home}")
    server = nginx(signed)
    for tool in (ostreefs, ostree):
        client = make_client(tool, tmp_path / f"ok-{tool.name}", server.url,
                             "gpg-verify-summary=true", gpg_import=pub)
        proc = pull(tool, client, "origin", "main")
        assert proc.returncode == 0, proc.stderr
        assert refs_of(client) == {"refs/remotes/origin/main": commit}
        assert_fsck_ok(ostree, ostreefs, client)

    unsigned, _ = make_server_repo(ostree, tmp_path / "unsigned", tree)
    server2 = nginx(unsigned)
    client = make_client(ostreefs, tmp_path / "refused", server2.url, gpg_import=pub)
    proc = pull(ostreefs, client, "origin", "main")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no signatures found" in proc.stderr, proc.stderr
    assert refs_of(client) == {}
    fetched = _fetched(server2)
    assert fetched and all(p.endswith(".commit") for p in fetched), fetched
    assert_fsck_ok(ostree, ostreefs, client)


@pytest.mark.parametrize("builder", ["ostreefs", "ostree"])
def test_each_tool_pulls_the_others_signed_repo(tmp_path: Path, ostree: Tool,
                                                ostreefs: Tool, nginx: NginxFactory,
                                                signing_key: object, builder: str) -> None:
    """One tool builds and signs (commit and summary) an archive repo served by nginx;
    the other pulls it with gpg-verify and gpg-verify-summary on; ostree fsck passes."""
    key = signing_key
    home, key_id, pub = key.home, key.key_id, key.public_gpg  # type: ignore[attr-defined]
    maker, puller = (ostreefs, ostree) if builder == "ostreefs" else (ostree, ostreefs)
    sign = (f"--gpg-sign={key_id}", f"--gpg-homedir={home}")
    repo, commit = make_server_repo(maker, tmp_path / "served", small_tree(tmp_path, 47),
                                    "main", *sign)
    maker("summary", "-u", f"--repo={repo}", *sign)
    assert (repo / "summary.sig").exists()
    server = nginx(repo)
    client = make_client(puller, tmp_path / "client", server.url,
                         "gpg-verify-summary=true", gpg_import=pub)
    proc = pull(puller, client, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert refs_of(client) == {"refs/remotes/origin/main": commit}
    assert_fsck_ok(ostree, ostreefs, client)
    shown = ostree("show", f"--repo={client}", "--gpg-verify-remote=origin", commit).stdout
    assert "Good signature" in shown, shown


def test_incremental_pull_fetches_only_new_objects(tmp_path: Path, ostree: Tool,
                                                    ostreefs: Tool,
                                                    nginx: NginxFactory) -> None:
    tree = make_big_tree(tmp_path / "tree", seed=44, n_files=1500, total_bytes=3 << 20)
    repo = init_repo(ostree, tmp_path / "served", "archive")
    first = _commit(ostree, repo, "main", tree, TS)
    before = object_files(repo)
    mutate_tree(tree, seed=45, fraction=0.01)
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    assert pull(ostreefs, client, "origin", "main").returncode == 0
    assert refs_of(client) == {"refs/remotes/origin/main": first}
    second = _commit(ostree, repo, "main", tree, TS + 100)
    new = _as_served(object_files(repo) - before)
    server.clear_log()
    proc = pull(ostreefs, client, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    fetched = _fetched(server)
    assert sorted(fetched) == sorted(new), (len(fetched), len(new))
    assert 0 < len(new) < 200
    assert refs_of(client) == {"refs/remotes/origin/main": second}
    assert_fsck_ok(ostree, ostreefs, client)
    server.clear_log()
    assert pull(ostreefs, client, "origin", "main").returncode == 0
    assert _fetched(server) == [], "an up-to-date pull fetched objects"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> tuple[Path, list[str]]:
    """Three commits on ``main`` and one on ``other``, with a summary."""
    base = tmp_path_factory.mktemp("pull-history")
    repo = init_repo(ostree, base / "served", "archive")
    tree = small_tree(base, 46)
    commits = []
    for i in range(3):
        (tree / "gen.txt").write_text(f"generation {i}\n")
        commits.append(_commit(ostree, repo, "main", tree, TS + i))
    (tree / "other.txt").write_text("other\n")
    _commit(ostree, repo, "other", tree, TS + 10)
    ostree("summary", "-u", f"--repo={repo}")
    return repo, commits


@pytest.mark.parametrize("depth", [0, 1, -1])
def test_depth(tmp_path: Path, ostree: Tool, ostreefs: Tool,
               history: tuple[Path, list[str]], nginx: NginxFactory, depth: int) -> None:
    repo, commits = history
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    assert pull(ostreefs, client, f"--depth={depth}", "origin", "main").returncode == 0
    have = [(client / "objects" / c[:2] / f"{c[2:]}.commit").exists() for c in commits]
    expect = {0: [False, False, True], 1: [False, True, True], -1: [True, True, True]}[depth]
    assert have == expect
    assert not list((client / "state").iterdir()), "a commit was left partial"
    assert_fsck_ok(ostree, ostreefs, client)


def test_mirror_whole_repo(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                           history: tuple[Path, list[str]], nginx: NginxFactory) -> None:
    repo, _ = history
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url, mode="archive")
    proc = pull(ostreefs, client, "--mirror", "origin")
    assert proc.returncode == 0, proc.stderr
    assert refs_of(client) == {f"refs/heads/{r}": (repo / "refs/heads" / r).read_text().strip()
                               for r in ("main", "other")}
    assert (client / "summary").read_bytes() == (repo / "summary").read_bytes()
    assert_fsck_ok(ostree, ostreefs, client)
    # Without a summary a whole-repo mirror is refused, as ostree refuses it.
    bare = shutil.copytree(repo, tmp_path / "nosummary", symlinks=True)
    (bare / "summary").unlink()
    server2 = nginx(bare)
    client2 = make_client(ostreefs, tmp_path / "client2", server2.url)
    proc = pull(ostreefs, client2, "--mirror", "origin")
    assert proc.returncode != 0 and "does not have a summary" in proc.stderr, proc.stderr


def test_commit_metadata_only_then_subpath_then_full(tmp_path: Path, ostree: Tool,
                                                     ostreefs: Tool,
                                                     history: tuple[Path, list[str]],
                                                     nginx: NginxFactory) -> None:
    repo, commits = history
    tip = commits[-1]
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    partial = client / "state" / f"{tip}.commitpartial"

    assert pull(ostreefs, client, "--commit-metadata-only", "origin", "main").returncode == 0
    assert refs_of(client) == {"refs/remotes/origin/main": tip}
    assert {p.rsplit(".", 1)[1] for p in _fetched(server)} == {"commit"}
    assert partial.exists()
    assert recorded_walk(client, tip) is None  # no tree to count yet

    # --subpath: only that directory's content (and the dirtrees leading to it).
    c = Commit.from_bytes((repo / "objects" / tip[:2] / f"{tip[2:]}.commit").read_bytes())
    root = DirTree.from_bytes((repo / "objects" / c.root_tree[:2] /
                               f"{c.root_tree[2:]}.dirtree").read_bytes())
    name, sub_tree, _ = root.dirs[0]
    sub = DirTree.from_bytes((repo / "objects" / sub_tree[:2] /
                              f"{sub_tree[2:]}.dirtree").read_bytes())
    server.clear_log()
    assert pull(ostreefs, client, f"--subpath=/{name}", "origin", "main").returncode == 0
    got_files = {p for p in _fetched(server) if p.endswith(".filez")}
    root_files = {f"/objects/{fc[:2]}/{fc[2:]}.filez" for _, fc in root.files}
    sub_files = {f"/objects/{fc[:2]}/{fc[2:]}.filez" for _, fc in sub.files}
    assert sub_files <= got_files | _as_served(object_files(client))
    assert not (got_files & (root_files - sub_files)), "a file outside the subpath came"
    assert partial.exists(), "a subpath pull must leave the commit partial"
    assert ostreefs("fsck", f"--repo={client}").returncode == 0
    assert recorded_walk(client, tip) is None  # dirtrees outside the subpath are missing

    # A full pull then completes the commit, fetching each remaining object once.
    server.clear_log()
    assert pull(ostreefs, client, "origin", "main").returncode == 0
    second = _fetched(server)
    assert len(second) == len(set(second))
    assert not (set(second) & got_files)
    assert not partial.exists()
    assert_fsck_ok(ostree, ostreefs, client)
    assert_counts_recorded(ostree, client, tip)


def test_dry_run_changes_nothing(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                 history: tuple[Path, list[str]], nginx: NginxFactory) -> None:
    repo, commits = history
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    before = repo_snapshot(client)
    proc = pull(ostreefs, client, "--dry-run", "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert f"origin:main: would move to {commits[-1]}" in proc.stdout
    assert "content objects to fetch" in proc.stdout
    assert repo_snapshot(client) == before
    assert not [p for p in _fetched(server) if p.endswith(".filez")]


def _client_object(client: Path, path: str) -> Path:
    name = path[len("/objects/"):]
    if name.endswith(".filez") and not (client / "objects" / name).exists():
        name = name[:-5] + "file"  # a bare-mode client
    return client / "objects" / name


def test_fsck_delete_then_pull_refetches_exactly_that(tmp_path: Path, ostree: Tool,
                                                      ostreefs: Tool,
                                                      ostree_served: tuple[Path, str],
                                                      nginx: NginxFactory) -> None:
    repo, commit = ostree_served
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url, mode="archive")
    assert pull(ostreefs, client, "origin", "main").returncode == 0
    victims = sorted(p for p in _fetched(server) if p.endswith(".filez"))[:2]
    victims.append(sorted(p for p in _fetched(server) if p.endswith(".dirtree"))[-1])
    for v in victims:
        flip_byte(_client_object(client, v))
    assert ostreefs("fsck", "--delete", f"--repo={client}", check=False).returncode != 0
    assert (client / "state" / f"{commit}.commitpartial").exists()
    server.clear_log()
    proc = pull(ostreefs, client, "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert sorted(_fetched(server)) == sorted(victims)
    assert not (client / "state" / f"{commit}.commitpartial").exists()
    assert_fsck_ok(ostree, ostreefs, client)


@pytest.mark.parametrize("mode", ["bare-user", "archive"])
def test_repair_refetches_corrupt_objects(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                          ostree_served: tuple[Path, str],
                                          nginx: NginxFactory, mode: str) -> None:
    repo, commit = ostree_served
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url, mode=mode)
    assert pull(ostreefs, client, "origin", "main").returncode == 0
    fetched = _fetched(server)
    victims = [next(p for p in sorted(fetched) if p.endswith(".filez")
                    and _client_object(client, p).stat().st_size > 0),
               next(p for p in fetched if p.endswith(".dirmeta"))]
    for v in victims:
        flip_byte(_client_object(client, v))
    # Mount records made from the damaged objects (what a recorder process writes).
    r = Repo.open(client)
    root = r.load_commit(commit).root_tree
    assert not record_tree(r, root)  # (damaged: not whole, but walked and marked)
    assert r.index.tree_recorded(root)
    r.close()
    server.clear_log()
    # A plain pull trusts a complete commit; --repair re-verifies and refetches.
    assert pull(ostreefs, client, "origin", "main").returncode == 0
    assert _fetched(server) == []
    proc = pull(ostreefs, client, "--repair", "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert sorted(_fetched(server)) == sorted(victims)
    assert proc.stdout.count("Repaired ") == 2
    assert_fsck_ok(ostree, ostreefs, client)
    # The repair dropped those records, as fsck does; the counts were made anew.
    r = Repo.open(client)
    assert not r.index.tree_recorded(root) and r.index.dir_headers(root) is None
    r.close()
    assert_counts_recorded(ostree, client, commit)


def test_library_progress_and_result(tmp_path: Path, ostreefs: Tool,
                                     ostree_served: tuple[Path, str],
                                     nginx: NginxFactory) -> None:
    from ostreefs.replication.pull import PullOptions, PullProgress
    from ostreefs.replication.pull import pull as lib_pull
    from ostreefs.store.repo import Repo

    repo, commit = ostree_served
    server = nginx(repo)
    client = make_client(ostreefs, tmp_path / "client", server.url)
    seen: list[PullProgress] = []
    old = os.umask(0o022)
    try:
        res = lib_pull(Repo.open(client), "origin", ["main"],
                       PullOptions(max_connections=2, pipeline_depth=4), seen.append)
    finally:
        os.umask(old)
    assert res.commits == {"main": commit}
    assert res.refs_moved == {"origin:main": commit}
    assert seen and seen[-1].done
    assert seen[-1].fetched == res.metadata_fetched + res.content_fetched
    assert res.content_fetched == len([p for p in _fetched(server) if p.endswith(".filez")])
    assert res.bytes_transferred > 0


def test_contenturl_splits_metadata_and_content_servers(
        tmp_path: Path, ostree: Tool, ostreefs: Tool, nginx: NginxFactory,
        ostree_served: tuple[Path, str]) -> None:
    """With contenturl set, each server sees the same requests from ostreefs as from
    ostree: refs/summary/config from url, objects from contenturl."""
    repo, commit = ostree_served
    seen: dict[str, tuple[set[str], set[str]]] = {}
    for tool in (ostree, ostreefs):
        meta, content = nginx(repo), nginx(repo)
        client = make_client(tool, tmp_path / f"client-{tool.name}", meta.url)
        tool("remote", "delete", f"--repo={client}", "origin")
        tool("remote", "add", f"--repo={client}", "--no-gpg-verify",
             f"--contenturl={content.url}", "origin", meta.url)
        proc = pull(tool, client, "origin", "main")
        assert proc.returncode == 0, proc.stderr
        assert refs_of(client) == {"refs/remotes/origin/main": commit}
        seen[tool.name] = ({p for p in meta.paths(status=200)},
                           {p for p in content.paths(status=200)})
    ours, theirs = seen["ostreefs"], seen["ostree"]
    assert any(p.startswith("/objects/") for p in ours[1]), ours
    assert not any(p.startswith("/objects/") for p in ours[0]), ours
    assert {p for p in ours[1] if p.startswith("/objects/")} == \
        {p for p in theirs[1] if p.startswith("/objects/")}
    assert {p for p in ours[0] if p.startswith("/objects/")} == \
        {p for p in theirs[0] if p.startswith("/objects/")}


def test_progress_on_a_terminal_only(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                     nginx: NginxFactory,
                                     ostree_served: tuple[Path, str]) -> None:
    """On a terminal the pull redraws a progress line; piped, it prints none."""
    import pty
    import subprocess

    server = nginx(ostree_served[0], requests_per_second=100)  # a pull of about a second
    client = make_client(ostreefs, tmp_path / "tty", server.url)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*ostreefs.argv0, "pull", f"--repo={client}", "origin", "main"],
                            stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    assert proc.wait(timeout=120) == 0, out
    text = out.decode(errors="replace")
    assert "Receiving objects:" in text and "\r" in text, text
    piped = make_client(ostreefs, tmp_path / "piped", server.url)
    proc2 = pull(ostreefs, piped, "origin", "main")
    assert proc2.returncode == 0 and "Receiving objects" not in proc2.stderr, proc2.stderr
