"""Persistence: tables, engine and session factory, queries (which take a session and never commit)."""
