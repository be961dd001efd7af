package dev.outboxrelay.spring.it;

import static dev.outboxrelay.spring.it.KafkaProbe.header;
import static org.assertj.core.api.Assertions.assertThat;

import dev.outboxrelay.spring.NoOpOutboxEventService;
import dev.outboxrelay.spring.OutboxEventService;
import java.util.List;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.junit.jupiter.api.Test;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.jdbc.core.JdbcTemplate;

/**
 * outbox.enabled=false: the same business code runs and commits, no outbox row is written and
 * nothing reaches Kafka. The marker proving "nothing" is emitted with the relay's SQL function
 * (the service is switched off in this application).
 */
@SpringBootTest(classes = ItApplication.class, webEnvironment = SpringBootTest.WebEnvironment.NONE,
        properties = "outbox.enabled=false")
class OutboxDisabledIT extends ItSupport {

    @Autowired
    OrderEventProcessor processor;
    @Autowired
    OutboxEventService outbox;
    @Autowired
    JdbcTemplate jdbc;

    @Test
    void businessLogicRunsAndNothingIsWrittenOrPublished() {
        assertThat(outbox).isInstanceOf(NoOpOutboxEventService.class);
        String orderId = "o-" + UUID.randomUUID();

        processor.processOrder(orderId, "dave", 700);
        // Outside a transaction too: a no-op, not an exception.
        assertThat(outbox.createEvent(orderId, "OrderCreated", new OrderCreatedEvent(orderId, "dave", 700))).isNull();

        assertThat(jdbc.queryForObject("SELECT total_cents FROM orders WHERE id = ?", Long.class, orderId))
                .isEqualTo(700);
        assertThat(jdbc.queryForObject("SELECT count(*) FROM public.outbox WHERE aggregate_id = ?", Long.class,
                orderId)).isZero();

        jdbc.queryForObject("SELECT public.outbox_emit('order', ?, 'Marker', '{}'::jsonb)", Long.class, orderId);
        try (KafkaProbe kafka = new KafkaProbe(ItEnvironment.kafkaBootstrap())) {
            List<ConsumerRecord<String, String>> seen = kafka.readUntil("outbox.order",
                    r -> orderId.equals(r.key()) && "Marker".equals(header(r, "event_type")));
            assertThat(seen.stream().filter(r -> orderId.equals(r.key())).map(r -> header(r, "event_type")))
                    .containsExactly("Marker");
        }
    }
}
