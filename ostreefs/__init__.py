"""ostreefs: a content-addressed store for bootable filesystem trees whose repositories
are OSTree repositories. See README.md; the library lives in ``ostreefs.store``."""

__version__ = "0.1.0"
