package dev.outboxrelay.spring.it;

import dev.outboxrelay.spring.OutboxEvent;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.domain.EntityScan;

/**
 * A small Spring Boot JPA application as a team would write it. OutboxEvent is added to the
 * entity scan only so the tests can read rows through it, and ddl-auto=validate checks its
 * mapping against the table outbox-relay init created.
 */
@SpringBootApplication
@EntityScan(basePackageClasses = {ItApplication.class, OutboxEvent.class})
public class ItApplication {
}
