"""Durable state and shared counters: PostgreSQL (embedded or named by URL), its migrations, and Redis."""
