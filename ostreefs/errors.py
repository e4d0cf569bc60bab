"""The project's error tree.

Every failure a user can cause (bad input, a corrupt object, a missing ref) is an
:class:`OstreefsError`; the CLI turns it into one line on stderr and its ``exit_code``.
Anything else escaping the library is a bug and keeps its traceback.

The docstring of each class is its message template, formatted with the positional
arguments, so call sites state facts and the wording lives in one place.
"""

from __future__ import annotations


class OstreefsError(Exception):
    """{}"""

    exit_code = 1

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        #: What the user can do about it; the CLI prints it on a second line.
        self.hint = hint

    def __str__(self) -> str:
        template = type(self).__doc__ or "{}"
        template = template.strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError, ValueError):
            return " ".join(str(a) for a in self.args)


class UsageError(OstreefsError):
    """{}"""

    exit_code = 2


class StoreError(OstreefsError):
    """{}"""


class MalformedData(StoreError):
    """Malformed {0}: {1}"""


class NotARepository(StoreError):
    """{0} is not an OSTree repository: {1}"""


class RepoExists(StoreError):
    """{0} already exists and is not empty"""


class ObjectMissing(StoreError):
    """No such {1} object {0}"""

    exit_code = 1


class CorruptObject(StoreError):
    """Corrupted {1} object {0}: {2}"""


class RefNotFound(StoreError):
    """Refspec '{0}' not found"""


class InvalidRef(StoreError):
    """Invalid refspec {0}"""


class LockTimeout(StoreError):
    """Timed out after {1}s waiting for the {2} lock on {0}"""


class FsckFailed(StoreError):
    """{0}"""
