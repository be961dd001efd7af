-- The relay's durable position per slot: written only after broker acks,
-- never moved backwards (the relay's upsert guards on lsn). The janitor keeps
-- the snapshot it will mark rows by next; a blocked row is recorded for `status`.
CREATE TABLE IF NOT EXISTS public.outbox_relay_checkpoint (
    slot_name text PRIMARY KEY,
    lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS janitor_snapshot pg_snapshot;
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS janitor_lsn pg_lsn;
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS blocked_row_id bigint;
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS blocked_reason text;
-- After a lost slot, `init` records the range of rows the stream will never deliver
-- (see `outbox-relay replay --status PENDING`).
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS recovery_started_at timestamptz;
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS recovery_snapshot pg_snapshot;
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS recovery_base pg_snapshot;
-- What the row means, versioned (README "Compatibility"): a relay reads every format up to
-- its own and refuses a newer one by name. Rows of releases before the column are format 1.
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS format smallint NOT NULL DEFAULT 1;
-- Partition counts of the topics the relay writes, as first seen, and the drift
-- found since (see `kafka.topic-check-interval`).
ALTER TABLE public.outbox_relay_checkpoint ADD COLUMN IF NOT EXISTS topic_check jsonb;
