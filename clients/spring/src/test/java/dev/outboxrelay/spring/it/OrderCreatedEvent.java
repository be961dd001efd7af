package dev.outboxrelay.spring.it;

/** The event payload, serialized by the application's ObjectMapper. */
public record OrderCreatedEvent(String orderId, String customer, long totalCents) {
}
