"""The review queue suite (a package, so its conftest does not shadow tests/server's ``conftest`` module)."""
