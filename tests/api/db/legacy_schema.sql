-- The catalogue's tables (SQLite): products, their photos with embeddings, and shopper events.
CREATE TABLE IF NOT EXISTS products (
    product_id      TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    fine_category   TEXT NOT NULL,
    coarse_category TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    attributes      TEXT NOT NULL DEFAULT '{}',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS products_fine ON products(fine_category);
CREATE INDEX IF NOT EXISTS products_coarse ON products(coarse_category);
CREATE TABLE IF NOT EXISTS images (
    image_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id   TEXT NOT NULL REFERENCES products(product_id) ON DELETE CASCADE,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    embedding    BLOB NOT NULL,
    model_id     TEXT NOT NULL,
    created_at   REAL NOT NULL,
    UNIQUE (product_id, sha256)
);
CREATE INDEX IF NOT EXISTS images_product ON images(product_id);
-- What shoppers did, on every channel: one history per user_id. No foreign key to products: a product
-- deleted later stays in the history it is part of.
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT UNIQUE,
    user_id    TEXT NOT NULL,
    product_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    channel    TEXT NOT NULL,
    ts         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, ts);
