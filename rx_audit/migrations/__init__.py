"""Alembic migrations of the review queue's schema (run by ``rx-audit queue migrate``, never on open)."""
