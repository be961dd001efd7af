package dev.outboxrelay.spring.it;

import static dev.outboxrelay.spring.it.KafkaProbe.header;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatExceptionOfType;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.outboxrelay.spring.OutboxEvent;
import dev.outboxrelay.spring.OutboxEventService;
import dev.outboxrelay.spring.OutboxTransactionRequiredException;
import io.micrometer.tracing.Span;
import io.micrometer.tracing.Tracer;
import jakarta.persistence.EntityManager;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.test.autoconfigure.actuate.observability.AutoConfigureObservability;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.transaction.support.TransactionTemplate;

/**
 * End to end with the outbox on: a Spring Boot JPA application writes through
 * OutboxEventService into PostgreSQL, the real outbox-relay publishes, and the tests read
 * Kafka. "Nothing arrives" is proved without waiting blindly: a marker event with the same
 * key (same topic, same partition) is committed afterwards; the relay publishes in commit
 * order, so once the marker is read, anything published for that key before it has been read
 * too.
 */
@SpringBootTest(classes = ItApplication.class, webEnvironment = SpringBootTest.WebEnvironment.NONE)
@AutoConfigureObservability(metrics = false) // @SpringBootTest turns tracing off otherwise
class OutboxRelayIT extends ItSupport {

    private static final String ORDER_TOPIC = "outbox.order";

    private static KafkaProbe kafka;

    @Autowired
    OrderEventProcessor processor;
    @Autowired
    OutboxEventService outbox;
    @Autowired
    JdbcTemplate jdbc;
    @Autowired
    TransactionTemplate tx;
    @Autowired
    EntityManager entityManager;
    @Autowired
    ObjectMapper objectMapper;
    @Autowired
    Tracer tracer;

    @BeforeAll
    static void connectKafka() {
        kafka = new KafkaProbe(ItEnvironment.kafkaBootstrap());
    }

    @AfterAll
    static void closeKafka() {
        if (kafka != null) {
            kafka.close();
        }
    }

    @Test
    void committedEventArrivesWithKeyValueHeadersAndTraceparent() throws Exception {
        String orderId = "o-" + UUID.randomUUID();
        Span span = tracer.nextSpan().name("place-order").start();
        try (Tracer.SpanInScope ignored = tracer.withSpan(span)) {
            processor.processOrder(orderId, "alice", 4200);
        } finally {
            span.end();
        }
        String traceparent = "00-" + span.context().traceId() + "-" + span.context().spanId() + "-01";
        assertThat(traceparent).matches("00-[0-9a-f]{32}-[0-9a-f]{16}-01");

        // Compared as parsed JSON: jsonb reorders keys and normalizes whitespace.
        JsonNode expected = objectMapper.readTree(objectMapper.writeValueAsString(
                new OrderCreatedEvent(orderId, "alice", 4200)));

        // The business row and the outbox row committed together.
        assertThat(count("SELECT count(*) FROM orders WHERE id = ?", orderId)).isEqualTo(1);
        long rowId = jdbc.queryForObject("SELECT id FROM public.outbox WHERE aggregate_id = ?", Long.class, orderId);

        // The row as the OutboxEvent entity reads it (ddl-auto=validate already checked the mapping).
        OutboxEvent row = entityManager.find(OutboxEvent.class, rowId);
        assertThat(row.getAggregateType()).isEqualTo("order");
        assertThat(row.getEventType()).isEqualTo("OrderCreated");
        assertThat(objectMapper.readTree(row.getEventData()))
                .isEqualTo(expected);
        assertThat(row.getHeaders()).containsEntry("traceparent", traceparent);
        assertThat(row.getTopic()).isNull();
        assertThat(row.getStatus()).isIn("PENDING", "PROCESSED");
        assertThat(row.getCreatedAt()).isNotNull();
        assertThat(row.getTxid()).matches("[0-9]+"); // filled by the table's default
        assertThat(row.getVersion()).isEqualTo(1);

        // What the relay published: key = aggregate_id, value = event_data, documented headers.
        ConsumerRecord<String, String> msg = last(kafka.readUntil(ORDER_TOPIC, r -> orderId.equals(r.key())));
        // Serialized by the application's ObjectMapper (configured for snake_case).
        assertThat(objectMapper.readTree(msg.value()).fieldNames()).toIterable()
                .containsExactlyInAnyOrder("order_id", "customer", "total_cents");
        assertThat(objectMapper.readTree(msg.value()))
                .isEqualTo(expected);
        assertThat(header(msg, "id")).isEqualTo(Long.toString(rowId));
        assertThat(header(msg, "event_type")).isEqualTo("OrderCreated");
        assertThat(header(msg, "aggregate_type")).isEqualTo("order");
        assertThat(header(msg, "aggregate_id")).isEqualTo(orderId);
        assertThat(header(msg, "lsn")).matches("[0-9A-F]+/[0-9A-F]+");
        assertThat(header(msg, "traceparent")).isEqualTo(traceparent);
    }

    @Test
    void longFormWritesAggregateTypeHeadersAndTopic() throws Exception {
        String invoiceId = "inv-" + UUID.randomUUID();
        Map<String, Object> headers = new LinkedHashMap<>();
        headers.put("tenant", "acme");
        headers.put("attempt", 2);
        OutboxEvent written = tx.execute(s -> outbox.createEvent("invoice", invoiceId, "InvoiceIssued",
                Map.of("invoiceId", invoiceId, "amountCents", 990), headers, "billing.invoices"));
        assertThat(written.getId()).isPositive();
        assertThat(written.getStatus()).isEqualTo("PENDING");
        assertThat(written.getTxid()).isNotBlank();

        ConsumerRecord<String, String> msg =
                last(kafka.readUntil("billing.invoices", r -> invoiceId.equals(r.key())));
        // Map keys are data, not properties: the naming strategy leaves them alone.
        assertThat(objectMapper.readTree(msg.value()))
                .isEqualTo(objectMapper.readTree("{\"invoiceId\":\"" + invoiceId + "\",\"amountCents\":990}"));
        assertThat(header(msg, "id")).isEqualTo(written.getId().toString());
        assertThat(header(msg, "aggregate_type")).isEqualTo("invoice");
        assertThat(header(msg, "event_type")).isEqualTo("InvoiceIssued");
        assertThat(header(msg, "tenant")).isEqualTo("acme");
        assertThat(header(msg, "attempt")).isEqualTo("2"); // non-strings as JSON text
        assertThat(msg.headers().lastHeader("traceparent")).isNull(); // no span was current
    }

    @Test
    void rolledBackTransactionLeavesNoRowAndNoMessage() {
        String orderId = "o-" + UUID.randomUUID();
        assertThatExceptionOfType(OrderEventProcessor.PaymentDeclinedException.class)
                .isThrownBy(() -> processor.processOrderThenFail(orderId, "bob", 100));

        assertThat(count("SELECT count(*) FROM orders WHERE id = ?", orderId)).isZero();
        assertThat(count("SELECT count(*) FROM public.outbox WHERE aggregate_id = ?", orderId)).isZero();
        assertOnlyMarkerArrives(orderId);
    }

    @Test
    void outsideATransactionItThrowsAndWritesNothing() {
        String orderId = "o-" + UUID.randomUUID();
        assertThatExceptionOfType(OutboxTransactionRequiredException.class)
                .isThrownBy(() -> outbox.createEvent(orderId, "OrderCreated", new OrderCreatedEvent(orderId, "carol", 1)))
                .withMessageContaining("needs the caller's transaction");

        assertThat(count("SELECT count(*) FROM public.outbox WHERE aggregate_id = ?", orderId)).isZero();
        assertOnlyMarkerArrives(orderId);
    }

    /** Commits a marker for the key, waits for it, and asserts it is the key's only message. */
    private void assertOnlyMarkerArrives(String key) {
        tx.executeWithoutResult(s -> outbox.createEvent("order", key, "Marker", Map.of("marker", true), null, null));
        List<ConsumerRecord<String, String>> seen =
                kafka.readUntil(ORDER_TOPIC, r -> key.equals(r.key()) && "Marker".equals(header(r, "event_type")));
        assertThat(seen.stream().filter(r -> key.equals(r.key())).map(r -> header(r, "event_type")))
                .containsExactly("Marker");
    }

    private long count(String sql, String arg) {
        return jdbc.queryForObject(sql, Long.class, arg);
    }

    private static <T> T last(List<T> list) {
        return list.get(list.size() - 1);
    }
}
