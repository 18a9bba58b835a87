"""The database every replica shares: its tables, its engine and its migrations (SQLite embedded, PostgreSQL)."""
