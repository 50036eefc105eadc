"""Helpers for tests of labs: run labctl, snapshot the host, find leftovers."""
