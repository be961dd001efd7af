CREATE TABLE IF NOT EXISTS orders (
    id text PRIMARY KEY,
    customer text NOT NULL,
    total_cents bigint NOT NULL
);
