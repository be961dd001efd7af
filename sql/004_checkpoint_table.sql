-- The relay's durable position per slot: written only after broker acks,
-- never moved backwards (the relay's upsert guards on lsn).
CREATE TABLE IF NOT EXISTS public.outbox_relay_checkpoint (
    slot_name text PRIMARY KEY,
    lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
