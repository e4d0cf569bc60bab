"""Remotes: the repo config and per-remote keyring must be the files ``ostree remote`` writes.

Each test runs the same command lines through ostree 2022.7 and ostreefs on twin
repositories and compares bytes (config, ``NAME.trustedkeys.gpg``) and output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gpgkeys import TestKey
from support import TS_ARG, Tool, assert_clean_failure, init_repo

from ostreefs.store.remotes import RemoteNotFound, get_remote, list_remotes
from ostreefs.store.repo import Repo

OPTION_SETS = [
    [["origin", "http://example.com/repo"]],
    [["--no-gpg-verify", "--set=tls-permissive=true", "--set=contenturl=http://c/",
      "--set=gpg-verify-summary=true", "b", "http://x/", "main", "other"]],
    [["--set=a=1", "--contenturl=http://cc", "--no-gpg-verify", "--collection-id=org.C",
      "--set=b=2", "z", "http://z", "m", "n"],
     ["--set=contenturl=http://s", "--contenturl=http://o", "q", "http://q"],
     ["--set=url=http://s", "u", "http://u"]],
    [["--set=tls-ca-path=/a b", "--set=foo=a;b", "--set=tls-client-cert-path=/c",
      "--set=tls-client-key-path=/k", "c", "http://y/ z"],
     ["--set=gpg-verify=true", "--no-gpg-verify", "--set=a=1", "--set=a=2", "w", "http://w"]],
]


def _twins(ostree: Tool, ostreefs: Tool, tmp_path: Path, mode: str = "archive"
           ) -> tuple[Path, Path]:
    a = init_repo(ostree, tmp_path / "ostree-repo", mode)
    b = init_repo(ostree, tmp_path / "ostreefs-repo", mode)
    return a, b


@pytest.mark.parametrize("sets", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_add_writes_ostrees_config(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                   sets: list[list[str]]) -> None:
    a, b = _twins(ostree, ostreefs, tmp_path)
    for args in sets:
        ostree("remote", "add", f"--repo={a}", *args)
        ostreefs("remote", "add", f"--repo={b}", *args)
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    # ostree reads what ostreefs wrote
    assert ostree("remote", "list", f"--repo={b}").stdout == \
        ostreefs("remote", "list", f"--repo={b}").stdout


def test_delete_list_show_url_match_ostree(ostree: Tool, ostreefs: Tool,
                                           tmp_path: Path) -> None:
    a, b = _twins(ostree, ostreefs, tmp_path, "bare-user")
    for repo, tool in ((a, ostree), (b, ostreefs)):
        for name, url in (("one", "http://one/"), ("second", "https://two/x"),
                          ("third", "file:///srv/r")):
            tool("remote", "add", f"--repo={repo}", "--no-gpg-verify", name, url)
        tool("remote", "delete", f"--repo={repo}", "second")
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    for args in (["list"], ["list", "-u"], ["show-url", "third"]):
        assert ostreefs("remote", *args, f"--repo={b}").stdout == \
            ostree("remote", *args, f"--repo={a}").stdout
    for repo, tool in ((a, ostree), (b, ostreefs)):
        tool("remote", "delete", f"--repo={repo}", "third")
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    # --if-exists / --if-not-exists succeed quietly and change nothing
    before = (b / "config").read_bytes()
    ostreefs("remote", "delete", f"--repo={b}", "--if-exists", "nope")
    ostreefs("remote", "add", f"--repo={b}", "--if-not-exists", "one", "http://other/")
    assert (b / "config").read_bytes() == before


def test_library_reads_remote(ostree: Tool, tmp_path: Path) -> None:
    repo = init_repo(ostree, tmp_path / "r", "archive")
    ostree("remote", "add", f"--repo={repo}", "--set=tls-ca-path=/ca.pem",
           "--set=tls-client-cert-path=/c.pem", "--set=tls-client-key-path=/k.pem",
           "--set=tls-permissive=true", "--set=gpg-verify-summary=true",
           "--contenturl=http://mirror/", "origin", "http://main/", "os/x86_64", "os/arm")
    ostree("remote", "add", f"--repo={repo}", "plain", "http://p/")
    r = Repo.open(repo)
    assert list_remotes(r) == ["origin", "plain"]
    o = get_remote(r, "origin")
    assert (o.url, o.contenturl, o.branches) == ("http://main/", "http://mirror/",
                                                 ["os/x86_64", "os/arm"])
    assert (o.tls_ca_path, o.tls_client_cert_path, o.tls_client_key_path) == (
        "/ca.pem", "/c.pem", "/k.pem")
    assert o.tls_permissive and o.gpg_verify and o.gpg_verify_summary
    p = get_remote(r, "plain")
    assert p.gpg_verify and not p.gpg_verify_summary and not p.tls_permissive
    assert p.options == {"url": "http://p/"}
    with pytest.raises(RemoteNotFound, match='Remote "nope" not found'):
        get_remote(r, "nope")


def test_keyring_matches_ostree(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                signing_key: TestKey, other_key: TestKey) -> None:
    a, b = _twins(ostree, ostreefs, tmp_path)
    outs = []
    for repo, tool in ((a, ostree), (b, ostreefs)):
        r1 = tool("remote", "add", f"--repo={repo}", f"--gpg-import={signing_key.public_asc}",
                  "origin", "http://x/")
        r2 = tool("remote", "gpg-import", f"--repo={repo}", "origin", "-k",
                  str(other_key.public_gpg))
        r3 = tool("remote", "gpg-import", f"--repo={repo}", "origin", "--stdin",
                  input=signing_key.public_asc.read_text())
        outs.append((r1.stdout, r2.stdout, r3.stdout))
    assert outs[0] == outs[1]
    assert outs[1][2] == 'Imported 0 GPG keys to remote "origin"\n'
    assert (b / "origin.trustedkeys.gpg").read_bytes() == \
        (a / "origin.trustedkeys.gpg").read_bytes()
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    listing = ostreefs("remote", "gpg-list-keys", f"--repo={b}", "origin").stdout
    assert listing == ostree("remote", "gpg-list-keys", f"--repo={a}", "origin").stdout
    assert f"Key: {signing_key.fingerprint}" in listing
    assert f"UID: {other_key.uid}" in listing
    # delete removes the keyring, as ostree does
    ostreefs("remote", "delete", f"--repo={b}", "origin")
    assert not (b / "origin.trustedkeys.gpg").exists()


def test_bad_input_is_one_line(ostree: Tool, ostreefs: Tool, tmp_path: Path) -> None:
    repo = init_repo(ostree, tmp_path / "r", "archive")
    ostreefs("remote", "add", f"--repo={repo}", "origin", "http://x/")
    before = (repo / "config").read_bytes()
    cases = [
        (["show-url", "nope"], 'Remote "nope" not found'),
        (["delete", "nope"], 'Remote "nope" not found'),
        (["gpg-list-keys", "nope"], 'Remote "nope" not found'),
        (["add", "origin", "http://y/"], 'Remote configuration for "origin" already exists'),
        (["add", "--set=foo", "n2", "http://y/"], "Missing '=' in KEY=VALUE for --set"),
        (["add", "--set= k =v", "n2", "http://y/"], "Invalid remote option name"),
        (["add", "bad name", "http://y/"], "Invalid remote name bad name"),
        (["add", f"--gpg-import={tmp_path}/missing.asc", "n3", "http://y/"],
         "missing.asc: No such file or directory"),
        (["gpg-import", "origin", "-k", f"{tmp_path}/missing.gpg"],
         "No such file or directory"),
    ]
    (tmp_path / "junk.asc").write_text("not a key\n")
    cases.append((["add", f"--gpg-import={tmp_path}/junk.asc", "n4", "http://y/"],
                  "no valid OpenPGP keys"))
    for args, msg in cases:
        p = ostreefs("remote", args[0], f"--repo={repo}", *args[1:], check=False)
        assert_clean_failure(p)
        assert msg in p.stderr, (args, p.stderr)
    # nothing half-written: the config is as it was, no keyring appeared
    assert (repo / "config").read_bytes() == before
    assert not list(repo.glob("*.trustedkeys.gpg"))


def test_gpg_import_by_key_id(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                              signing_key: TestKey, other_key: TestKey) -> None:
    """KEY-IDs pick keys from the -k files, or with no file from the user's keyring."""
    both = tmp_path / "both.gpg"
    both.write_bytes(signing_key.public_gpg.read_bytes() + other_key.public_gpg.read_bytes())
    a, b = _twins(ostree, ostreefs, tmp_path)
    outs = []
    for repo, tool in ((a, ostree), (b, ostreefs)):
        tool("remote", "add", f"--repo={repo}", "origin", "http://x/")
        outs.append(tool("remote", "gpg-import", f"--repo={repo}", "origin", "-k", both,
                         other_key.fingerprint).stdout)
    assert outs[0] == outs[1] == 'Imported 1 GPG key to remote "origin"\n'
    assert (b / "origin.trustedkeys.gpg").read_bytes() == \
        (a / "origin.trustedkeys.gpg").read_bytes()
    listing = ostreefs("remote", "gpg-list-keys", f"--repo={b}", "origin").stdout
    assert other_key.fingerprint in listing and signing_key.fingerprint not in listing
    # From the user's keyring (ostree 2022.7 finds no key there, so no oracle): the
    # same keyring bytes as importing the exported key file.
    ostreefs("remote", "add", f"--repo={b}", "mine", "http://x/")
    ostreefs("remote", "gpg-import", f"--repo={b}", "mine", other_key.key_id,
             env={"GNUPGHOME": str(other_key.home)})
    assert (b / "mine.trustedkeys.gpg").read_bytes() == \
        (a / "origin.trustedkeys.gpg").read_bytes()
    p = ostreefs("remote", "gpg-import", f"--repo={b}", "mine", "0123456789ABCDEF",
                 env={"GNUPGHOME": str(other_key.home)}, check=False)
    assert_clean_failure(p)


def test_system_repo_uses_remotes_d(ostree: Tool, tmp_path: Path, signing_key: TestKey,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The system repository reads remotes (and keyrings) from remotes.d too, and adds
    new remotes there, one NAME.conf each; other repositories never look there."""
    from ostreefs.store import gpg, remotes

    repo = init_repo(ostree, tmp_path / "sysroot" / "ostree" / "repo", "bare")
    ostree("remote", "add", f"--repo={repo}", "--no-gpg-verify", "local", "http://l/")
    rdir = tmp_path / "etc" / "ostree" / "remotes.d"
    rdir.mkdir(parents=True)
    (rdir / "vendor.conf").write_text('[remote "vendor"]\nurl=https://vendor/\n')
    (rdir / "vendor.trustedkeys.gpg").write_bytes(signing_key.public_gpg.read_bytes())
    monkeypatch.setattr(remotes, "REMOTES_CONFIG_DIR", str(rdir))
    r = Repo.open(repo)
    assert list_remotes(r) == ["local"]  # not the system repository: remotes.d unread
    monkeypatch.setattr(remotes, "SYSTEM_REPOS", (str(repo),))
    assert list_remotes(r) == ["local", "vendor"]
    assert get_remote(r, "vendor").url == "https://vendor/"
    assert gpg.trusted_keyrings(r, "vendor") == [rdir / "vendor.trustedkeys.gpg"]
    config = (repo / "config").read_bytes()
    remotes.add_remote(r, "extra", "http://e/", options={"gpg-verify": "false"})
    assert (rdir / "extra.conf").read_text() == \
        '[remote "extra"]\nurl=http://e/\ngpg-verify=false\n'
    assert (repo / "config").read_bytes() == config
    remotes.delete_remote(r, "vendor")
    assert not (rdir / "vendor.conf").exists()
    assert list_remotes(r) == ["extra", "local"]


def test_remote_refs_and_summary_over_http(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                           signing_key: TestKey, other_key: TestKey,
                                           nginx: Callable[..., Any]) -> None:
    """``remote refs`` and ``remote summary`` against a real nginx: ostree's output,
    and a signed summary checked against the remote's keyring."""
    server = init_repo(ostree, tmp_path / "server", "archive")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x\n")
    for ref in ("os/x86_64", "main"):
        ostree("commit", f"--repo={server}", "-b", ref, "-s", ref, TS_ARG,
               "--add-metadata-string=version=3", tree)
    ostree("summary", f"--repo={server}", "-u", f"--gpg-sign={signing_key.key_id}",
           f"--gpg-homedir={signing_key.home}")
    url = nginx(server).url
    a, b = _twins(ostree, ostreefs, tmp_path)
    for repo, tool in ((a, ostree), (b, ostreefs)):
        tool("remote", "add", f"--repo={repo}", "--set=gpg-verify-summary=true",
             f"--gpg-import={signing_key.public_gpg}", "origin", url)
        tool("remote", "add", f"--repo={repo}", "--set=gpg-verify-summary=true",
             f"--gpg-import={other_key.public_gpg}", "wrongkey", url)
    for args in (["refs", "origin"], ["summary", "origin"], ["summary", "--raw", "origin"]):
        out = ostree("remote", args[0], f"--repo={a}", *args[1:]).stdout
        assert ostreefs("remote", args[0], f"--repo={b}", *args[1:]).stdout == out, args
    assert "origin:os/x86_64" in ostreefs("remote", "refs", f"--repo={b}", "origin").stdout
    bad = ostreefs("remote", "summary", f"--repo={b}", "wrongkey", check=False)
    assert_clean_failure(bad)
    assert "none are in trusted keyring" in bad.stderr
    assert ostree("remote", "summary", f"--repo={a}", "wrongkey", check=False).returncode != 0
