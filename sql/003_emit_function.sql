-- Emit one event from SQL, inside the caller's transaction; returns the row id.
CREATE OR REPLACE FUNCTION public.outbox_emit(
    p_aggregate_type text,
    p_aggregate_id text,
    p_event_type text,
    p_event_data jsonb,
    p_headers jsonb DEFAULT NULL,
    p_topic text DEFAULT NULL
) RETURNS bigint
LANGUAGE sql
AS $$
    INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers, topic)
    VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_event_data, p_headers, p_topic)
    RETURNING id;
$$;
