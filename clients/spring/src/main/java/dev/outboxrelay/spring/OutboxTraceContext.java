package dev.outboxrelay.spring;

/**
 * The current trace context as a W3C {@code traceparent}, or {@code null} when there is none.
 * The auto-configuration provides one backed by Micrometer Tracing when it is on the class path;
 * declare your own bean to take it from elsewhere.
 */
@FunctionalInterface
public interface OutboxTraceContext {

    /** {@code 00-<32 hex trace id>-<16 hex span id>-<01 sampled | 00>}, or {@code null}. */
    String traceparent();

    /** No trace context, ever. */
    static OutboxTraceContext none() {
        return () -> null;
    }
}
