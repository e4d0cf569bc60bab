"""Replication: remotes over HTTP(S), pulled incrementally and verified (trio + httpx)."""
