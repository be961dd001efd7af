-- Logical slot with the pgoutput plugin; creating it marks where the relay starts.
SELECT pg_create_logical_replication_slot('outbox_relay', 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'outbox_relay');
