-- Inserts only: the janitor's UPDATE and DELETE never enter the stream.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'outbox_relay_pub') THEN
        CREATE PUBLICATION outbox_relay_pub FOR TABLE public.outbox WITH (publish = 'insert');
    END IF;
END
$$;
