-- The outbox: applications insert one row per event in the same transaction
-- as their business change. The relay only ever reads inserts of it.
CREATE TABLE IF NOT EXISTS public.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    event_type text NOT NULL,
    event_data jsonb NOT NULL,
    headers jsonb,
    topic text,
    created_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    status text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'PROCESSED', 'FAILED')),
    retry_count integer NOT NULL DEFAULT 0,
    -- inserting transaction: lets the janitor mark exactly the rows the checkpoint covers
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    version integer NOT NULL DEFAULT 1
);
-- The janitor finds rows by status and age.
CREATE INDEX IF NOT EXISTS outbox_status_created_at_idx ON public.outbox (status, created_at);
