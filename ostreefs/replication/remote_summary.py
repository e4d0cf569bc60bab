"""What a remote says about itself before any object is fetched: summary, signature, config.

``summary.sig`` then ``summary`` (ostree's order); with ``gpg-verify-summary`` the
summary must be signed by a key trusted for the remote or the pull stops here. The
remote's ``config`` must name an archive repository: other modes are not servable.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ostreefs.errors import MalformedData, StoreError
from ostreefs.replication.tls import TlsSettings
from ostreefs.replication.transport import Endpoint, Transport, run_unwrapped
from ostreefs.store.config import KeyFile, RepoMode
from ostreefs.store.objects import Summary
from ostreefs.store.remotes import Remote, get_remote
from ostreefs.store.repo import Repo

DEFAULT_TIMEOUT = 30.0


class SummaryMissing(StoreError):
    """{0}"""


@dataclass
class RemoteState:
    summary: bytes | None
    summary_sig: bytes | None
    #: Ref -> commit from the summary; None without a summary.
    refs: dict[str, str] | None


def endpoint_for(rem: Remote, url: str | None = None, *, timeout: float | None = None,
                 retries: int = 5, connections: int = 4, depth: int = 4,
                 headers: dict[str, str] | None = None) -> Endpoint:
    """The remote's connection settings; ``timeout`` None: its ``timeout`` option, or 30 s."""
    if timeout is None:
        raw = rem.options.get("timeout")
        try:
            timeout = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:
            raise StoreError(f"Invalid timeout '{raw}' for remote {rem.name}") from None
    if timeout <= 0:
        raise StoreError(f"Invalid timeout {timeout:g}: it must be positive")
    base_url = url or rem.url
    if base_url.startswith("mirrorlist="):
        raise StoreError(f"Remote {rem.name}: mirrorlist URLs are not supported")
    return Endpoint(url=base_url, contenturl=None if url else rem.contenturl,
                    tls=TlsSettings.from_remote(rem), timeout=timeout,
                    retries=retries, connections=connections, depth=depth,
                    headers=dict(headers or {}),
                    http2=rem.options.get("http2", "true").strip().lower()
                    not in ("false", "no", "0"))


async def fetch_remote_state(repo: Repo, rem: Remote, t: Transport, *,
                             need_summary: bool) -> RemoteState:
    sig = await t.get("summary.sig")
    summary = await t.get("summary")
    if rem.gpg_verify_summary:
        if summary is None:
            raise SummaryMissing("GPG verification enabled, but no summary found (use "
                                 "gpg-verify-summary=false in remote config to disable)")
        await trio.to_thread.run_sync(_verify_summary, repo, rem.name, summary, sig)
    if need_summary and summary is None:
        raise SummaryMissing("Fetching all refs was requested in mirror mode, but remote "
                             "repository does not have a summary")
    config = await t.get("config", max_size=1 << 20)
    if config is not None:
        _check_config(config)
    refs = None
    if summary is not None:
        try:
            parsed = Summary.from_bytes(summary)
        except MalformedData as e:
            raise StoreError(f"Invalid summary from remote {rem.name}: {e.args[1]}") from None
        refs = {r.name: r.commit for r in parsed.refs}
    return RemoteState(summary, sig, refs)


def _verify_summary(repo: Repo, remote: str, summary: bytes, sig: bytes | None) -> None:
    from ostreefs.store import gpg

    sigs = gpg.summary_signatures(sig) if sig is not None else []
    result = gpg.verify_data(repo, remote, summary, sigs) if sigs else gpg.GpgVerifyResult()
    gpg.require_valid(result, "summary")


def _check_config(data: bytes) -> None:
    try:
        kf = KeyFile(data.decode("utf-8"))
    except (UnicodeDecodeError, MalformedData):
        return  # not a repository config: the objects will tell
    mode = kf.get("core", "mode")
    if mode is None:
        return
    try:
        parsed = RepoMode.parse(mode)
    except (MalformedData, StoreError, ValueError):
        parsed = None
    if parsed is None or not parsed.is_archive:
        raise StoreError(f'Can\'t pull from archives with mode "{mode}"',
                         hint="serve an archive repository (ostree init --mode=archive)")


def fetch_summary(repo: Repo, remote_name: str) -> tuple[bytes | None, bytes | None]:
    """The remote's ``summary`` and ``summary.sig`` as served (None where absent)."""
    rem = get_remote(repo, remote_name)
    ep = endpoint_for(rem)

    def fatal(err: BaseException) -> None:
        raise err

    async def main() -> tuple[bytes | None, bytes | None]:
        async with Transport(ep, spill_dir=str(repo.path / "tmp"), on_fatal=fatal) as t:
            summary = await t.get("summary")
            sig = await t.get("summary.sig")
            return summary, sig

    return run_unwrapped(main)
