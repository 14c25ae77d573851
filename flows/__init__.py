"""Prefect flows, the CLI and how the modules are wired."""
