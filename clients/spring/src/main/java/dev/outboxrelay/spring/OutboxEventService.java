package dev.outboxrelay.spring;

import java.util.Map;

/**
 * Writes outbox rows in the caller's transaction; outbox-relay publishes them to Kafka after
 * the transaction commits (and never if it rolls back).
 *
 * <pre>{@code
 * @Transactional
 * public void process(CreateOrder command) {
 *     Order order = orderRepository.save(new Order(command));
 *     outboxEventService.createEvent(order.getId(), "OrderCreated", new OrderCreatedEvent(order));
 * }
 * }</pre>
 *
 * <p>Contract of both forms, when {@code outbox.enabled=true} (the default):
 * <ul>
 * <li>A transaction must be active on the application's {@code DataSource}; otherwise
 *     {@link OutboxTransactionRequiredException} and nothing is written. The row then commits
 *     or rolls back with the business change — an outbox row committed on its own would
 *     announce a change that may never happen.</li>
 * <li>{@code event} is serialized with the application's Jackson {@code ObjectMapper} (a
 *     {@code String} becomes a JSON string; pass a {@code JsonNode} to write prepared JSON).</li>
 * <li>{@code aggregateId} is written as {@code String.valueOf(aggregateId)}: the Kafka key.</li>
 * <li>When the application has a current Micrometer Tracing span, its W3C {@code traceparent}
 *     is added to the headers (a {@code traceparent} the caller passes wins).</li>
 * <li>Returns the written row (id, created_at, status, txid as the database set them), detached.</li>
 * </ul>
 *
 * <p>When {@code outbox.enabled=false} both forms do nothing and return {@code null}: no row, no
 * transaction required, no serialization. The bean exists either way, so business code does
 * not change.
 */
public interface OutboxEventService {

    /**
     * Writes an event of the aggregate type {@code outbox.default-aggregate-type}.
     *
     * @throws IllegalStateException when {@code outbox.default-aggregate-type} is not set
     *     (nothing is written)
     * @throws OutboxTransactionRequiredException outside a transaction (nothing is written)
     */
    OutboxEvent createEvent(Object aggregateId, String eventType, Object event);

    /**
     * Writes an event with an explicit aggregate type, extra headers ({@code null}: none) and a
     * topic override ({@code null}: the relay's topic template decides).
     *
     * @throws OutboxTransactionRequiredException outside a transaction (nothing is written)
     */
    OutboxEvent createEvent(String aggregateType, Object aggregateId, String eventType, Object event,
            Map<String, ?> headers, String topic);
}
