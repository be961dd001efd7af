package dev.outboxrelay.spring;

import io.micrometer.tracing.Span;
import io.micrometer.tracing.TraceContext;
import io.micrometer.tracing.Tracer;
import org.springframework.beans.factory.ObjectProvider;

/**
 * The current Micrometer Tracing span (Brave or OpenTelemetry bridge) as a {@code traceparent}.
 * Formatted directly rather than through the application's {@code Propagator}, which would
 * produce whatever propagation the application configured (B3, for instance): the row's
 * header is always W3C. The tracer is looked up per call so that its absence is not an error.
 */
final class MicrometerOutboxTraceContext implements OutboxTraceContext {

    private final ObjectProvider<Tracer> tracer;

    MicrometerOutboxTraceContext(ObjectProvider<Tracer> tracer) {
        this.tracer = tracer;
    }

    @Override
    public String traceparent() {
        Tracer t = tracer.getIfUnique();
        if (t == null) {
            return null;
        }
        Span span = t.currentSpan();
        if (span == null) {
            return null;
        }
        // A no-op span has empty ids: format() rejects them.
        TraceContext c = span.context();
        return Traceparent.format(c.traceId(), c.spanId(), c.sampled());
    }
}
