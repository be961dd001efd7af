package dev.outboxrelay.spring.it;

import static org.assertj.core.api.Assertions.fail;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.function.Predicate;
import java.util.stream.Collectors;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Reads what the relay published: a group-less consumer assigned to every partition of a topic
 * from the beginning, polling until a record matches or the deadline passes (never a fixed
 * sleep). The topic may not exist yet — the relay creates it with the first message.
 */
final class KafkaProbe implements AutoCloseable {

    static final Duration DEADLINE = Duration.ofSeconds(90);

    private final KafkaConsumer<String, String> consumer;

    KafkaProbe(String bootstrap) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "outbox-relay-spring-it");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        consumer = new KafkaConsumer<>(p);
    }

    /**
     * Every record of {@code topic} from the beginning up to and including the first that
     * matches {@code until}; fails the test if none does before the deadline.
     */
    List<ConsumerRecord<String, String>> readUntil(String topic, Predicate<ConsumerRecord<String, String>> until) {
        long deadline = System.nanoTime() + DEADLINE.toNanos();
        assignFromBeginning(topic, deadline);
        List<ConsumerRecord<String, String>> seen = new ArrayList<>();
        while (System.nanoTime() < deadline) {
            for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                seen.add(r);
                if (until.test(r)) {
                    return seen;
                }
            }
        }
        return fail("no matching record on " + topic + " within " + DEADLINE + "; seen: "
                + seen.stream().map(KafkaProbe::describe).collect(Collectors.joining("; ")));
    }

    private void assignFromBeginning(String topic, long deadline) {
        while (true) {
            List<PartitionInfo> parts;
            try {
                parts = consumer.partitionsFor(topic, Duration.ofSeconds(2));
            } catch (org.apache.kafka.common.errors.TimeoutException e) {
                parts = List.of();
            }
            if (parts != null && !parts.isEmpty()) {
                List<TopicPartition> tps = parts.stream().map(i -> new TopicPartition(topic, i.partition())).toList();
                consumer.assign(tps);
                consumer.seekToBeginning(tps);
                return;
            }
            if (System.nanoTime() >= deadline) {
                fail("topic " + topic + " did not appear within " + DEADLINE + " (is the relay running?)");
            }
            try {
                Thread.sleep(200); // poll interval while waiting for the relay to create the topic
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                fail("interrupted");
            }
        }
    }

    /** The last value of header {@code name}, as UTF-8, or {@code null}. */
    static String header(ConsumerRecord<?, ?> r, String name) {
        Header h = r.headers().lastHeader(name);
        return h == null ? null : new String(h.value(), StandardCharsets.UTF_8);
    }

    static String describe(ConsumerRecord<String, String> r) {
        return r.topic() + "/" + r.partition() + "@" + r.offset() + " key=" + r.key() + " event_type="
                + header(r, "event_type");
    }

    @Override
    public void close() {
        consumer.close(Duration.ofSeconds(5));
    }
}
