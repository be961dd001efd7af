package dev.outboxrelay.spring;

import java.util.Map;

/**
 * The service when {@code outbox.enabled=false}: every call does nothing and returns
 * {@code null} — no row, no transaction required, no serialization — so business code runs
 * unchanged with the outbox switched off.
 */
public class NoOpOutboxEventService implements OutboxEventService {

    @Override
    public OutboxEvent createEvent(Object aggregateId, String eventType, Object event) {
        return null;
    }

    @Override
    public OutboxEvent createEvent(String aggregateType, Object aggregateId, String eventType, Object event,
            Map<String, ?> headers, String topic) {
        return null;
    }
}
