-- Least privilege for the relay: REPLICATION to stream, the outbox for the
-- janitor (read, mark, prune), its own checkpoint table, nothing else.
-- Run as a superuser: psql -v relay_password='...' -f 900_relay_role.sql
SELECT format('CREATE ROLE outbox_relay WITH LOGIN REPLICATION PASSWORD %L', :'relay_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_relay')\gexec
GRANT USAGE ON SCHEMA public TO outbox_relay;
GRANT SELECT, UPDATE, DELETE ON public.outbox TO outbox_relay;
GRANT SELECT, INSERT, UPDATE ON public.outbox_relay_checkpoint TO outbox_relay;
