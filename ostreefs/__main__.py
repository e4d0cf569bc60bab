"""``python -m ostreefs``."""

from ostreefs.cli.main import entry

entry()
