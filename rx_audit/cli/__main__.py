"""``python -m rx_audit.cli``."""

from rx_audit.cli import app

app()
