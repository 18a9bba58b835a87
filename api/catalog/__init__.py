"""The catalogue: SQLite store (truth), FAISS vector index (derived), and the service that keeps them agreeing."""
