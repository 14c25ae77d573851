"""Environment protocol, built-in environments and the environment cluster (issue 3)."""
