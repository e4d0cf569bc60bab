"""Layer stacks: the union of several commits with OCI whiteouts applied (pure, no FUSE).

``ostreefs mount --layer REV1 --layer REV2 ... MOUNTPOINT`` shows what
``ostree checkout --union --whiteouts`` of REV1, REV2, ... (lower first) into one
directory leaves. The rules, as ostree 2022.7 applies them (checked by experiment):

* Each layer is applied over what the lower ones left. In a directory, the layer's
  files come first, then its subdirectories, each in dirtree (byte) order.
* ``.wh.NAME`` removes NAME (a file or a whole tree) where it sorts, so it also removes
  an entry of its own layer that sorts before it; NAME written after it survives.
  Whiteout files themselves never appear.
* ``.wh..wh..opq`` in a layer's directory makes ostree delete the existing directory
  and create it again: nothing lower shows, and the directory takes *that* layer's
  mode, owner and xattrs. Files of the same layer show whatever their sort order.
* Otherwise a directory keeps the metadata of the layer that created it: a later
  layer's directory of the same name adds entries but never changes mode, owner or
  xattrs. A later file replaces a lower file of the same name.
* Where ostree refuses (a file over a directory or the reverse) the upper entry
  replaces the lower one, as a container runtime does.

A merged directory is described by its *stack*: the ``(dirtree, dirmeta)`` pairs of the
layers that contribute to it, lower first, starting at the layer that (re)created it.
:func:`merge_dir` turns a stack into the directory's entries, each subdirectory with its
own stack, so a mount resolves the union one directory at a time, lazily.

How a build tool uses it (the container build round trip)::

    ostreefs mount --repo=R --layer base --layer deps /lower        # read-only union
    mount -t overlay overlay \\
        -o lowerdir=/lower,upperdir=/up,workdir=/work /merged
    ... the build step writes, edits and deletes under /merged ...
    umount /merged
    # Turn overlayfs whiteouts in /up into OCI ones (in a copy of /up):
    #   a character device 0:0 NAME     -> an empty regular file .wh.NAME
    #   a directory with xattr trusted.overlay.opaque=y -> add an empty .wh..wh..opq
    #   (and drop the trusted.overlay.* xattrs)
    ostreefs commit --repo=R -b step --tree=dir=/up-oci
    ostreefs umount /lower
    ostreefs mount --repo=R --layer base --layer deps --layer step /lower  # = /merged

The new layer holds only what the step changed; ``ostree checkout --union --whiteouts``
of the same refs in order gives the same tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ostreefs.store.objects import DirTree

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

#: One layer's contribution to a directory: (dirtree checksum, dirmeta checksum).
Layer = tuple[str, str]
Loader = Callable[[str], DirTree]


class Merged(NamedTuple):
    """One directory of the union: files (name, content checksum) and subdirectories
    (name, stack), each sorted by name bytes."""

    files: tuple[tuple[str, str], ...]
    dirs: tuple[tuple[str, tuple[Layer, ...]], ...]


def _is_opaque(t: DirTree) -> bool:
    return any(n == OPAQUE_WHITEOUT for n, _c in t.files)


def effective(stack: Sequence[Layer], load: Loader) -> tuple[Layer, ...]:
    """The part of a stack that shows: from the last layer marked opaque, if any."""
    for i in range(len(stack) - 1, 0, -1):
        if _is_opaque(load(stack[i][0])):
            return tuple(stack[i:])
    return tuple(stack)


def merge_dir(stack: Sequence[Layer], load: Loader) -> Merged:
    """The entries of the directory made of ``stack`` (see the module doc).

    ``load`` returns the parsed dirtree of a checksum. Each subdirectory's stack is
    already cut at its last opaque layer, so its first layer gives its metadata.
    """
    state: dict[str, str | list[Layer]] = {}
    for tree, _meta in effective(stack, load):
        t = load(tree)
        for n, c in t.files:
            if n.startswith(WHITEOUT_PREFIX):
                if n != OPAQUE_WHITEOUT:
                    state.pop(n[len(WHITEOUT_PREFIX):], None)
                continue
            state[n] = c
        for n, dt, dm in t.dirs:
            cur = state.get(n)
            if isinstance(cur, list):
                cur.append((dt, dm))
            else:
                state[n] = [(dt, dm)]
    files: list[tuple[str, str]] = []
    dirs: list[tuple[str, tuple[Layer, ...]]] = []
    for n in sorted(state, key=_sort_key):
        v = state[n]
        if isinstance(v, str):
            files.append((n, v))
        else:
            dirs.append((n, effective(v, load)))
    return Merged(tuple(files), tuple(dirs))


def _sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def stack_key(stack: Sequence[Layer]) -> str:
    """A cache key naming a merged directory (its dirtrees; metadata is not listed)."""
    return "L:" + "+".join(t for t, _m in stack)


def stack_of_key(key: str) -> tuple[Layer, ...]:
    """The dirtrees of :func:`stack_key` (with empty metas: listing does not need them)."""
    return tuple((t, "") for t in key[2:].split("+"))
