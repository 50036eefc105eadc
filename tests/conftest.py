"""Shared fixtures: the Service lab of the integration suite (one per proxy mode)."""

pytest_plugins = ["tests.integration.service_lab"]
