package dev.outboxrelay.spring;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatExceptionOfType;
import static org.assertj.core.api.Assertions.assertThatIllegalStateException;
import static org.mockito.Mockito.mock;
import static org.mockito.Mockito.verifyNoInteractions;

import io.micrometer.tracing.Tracer;
import javax.sql.DataSource;
import org.junit.jupiter.api.Test;
import org.springframework.boot.autoconfigure.AutoConfigurations;
import org.springframework.boot.autoconfigure.jackson.JacksonAutoConfiguration;
import org.springframework.boot.context.properties.source.InvalidConfigurationPropertyValueException;
import org.springframework.boot.test.context.FilteredClassLoader;
import org.springframework.boot.test.context.runner.ApplicationContextRunner;

/**
 * Wiring and startup rules, without a database: the DataSource is a mock that records any use,
 * which proves the refusals happen before anything reaches the database. What is written and
 * published is covered end to end by the *IT classes.
 */
class OutboxAutoConfigurationTest {

    private final DataSource dataSource = mock(DataSource.class);

    private final ApplicationContextRunner runner = new ApplicationContextRunner()
            .withConfiguration(AutoConfigurations.of(JacksonAutoConfiguration.class, OutboxAutoConfiguration.class))
            .withBean(DataSource.class, () -> dataSource);

    @Test
    void enabledByDefault() {
        runner.run(ctx -> {
            assertThat(ctx).hasSingleBean(OutboxEventService.class);
            assertThat(ctx.getBean(OutboxEventService.class)).isInstanceOf(JdbcOutboxEventService.class);
            OutboxProperties props = ctx.getBean(OutboxProperties.class);
            assertThat(props.isEnabled()).isTrue();
            assertThat(props.getTable()).isEqualTo("public.outbox");
            assertThat(props.getDefaultAggregateType()).isNull();
        });
        verifyNoInteractions(dataSource); // nothing touches the database at startup
    }

    @Test
    void outsideATransactionItRefusesAndWritesNothing() {
        runner.withPropertyValues("outbox.default-aggregate-type=order").run(ctx -> {
            OutboxEventService outbox = ctx.getBean(OutboxEventService.class);
            assertThatExceptionOfType(OutboxTransactionRequiredException.class)
                    .isThrownBy(() -> outbox.createEvent("o-1", "OrderCreated", new Object()))
                    .withMessageContaining("needs the caller's transaction")
                    .withMessageContaining("Nothing was written");
        });
        verifyNoInteractions(dataSource);
    }

    @Test
    void shortFormWithoutDefaultAggregateTypeNamesTheKey() {
        runner.run(ctx -> assertThatIllegalStateException()
                .isThrownBy(() -> ctx.getBean(OutboxEventService.class).createEvent("o-1", "OrderCreated", "{}"))
                .withMessageContaining("outbox.default-aggregate-type is not set"));
        verifyNoInteractions(dataSource);
    }

    @Test
    void blankDefaultAggregateTypeFailsStartup() {
        runner.withPropertyValues("outbox.default-aggregate-type= ").run(ctx -> assertThat(ctx).hasFailed()
                .getFailure().rootCause().isInstanceOf(InvalidConfigurationPropertyValueException.class)
                .hasMessageContaining("outbox.default-aggregate-type"));
    }

    @Test
    void invalidTableFailsStartupNamingTheKey() {
        runner.withPropertyValues("outbox.table=public.outbox; drop table orders").run(ctx -> assertThat(ctx)
                .hasFailed().getFailure().rootCause().isInstanceOf(InvalidConfigurationPropertyValueException.class)
                .hasMessageContaining("outbox.table"));
    }

    @Test
    void enabledWithoutDataSourceFailsStartup() {
        new ApplicationContextRunner()
                .withConfiguration(AutoConfigurations.of(OutboxAutoConfiguration.class))
                .run(ctx -> assertThat(ctx).hasFailed().getFailure().rootCause()
                        .hasMessageContaining("needs one DataSource bean"));
    }

    @Test
    void disabledIsANoOpThatNeedsNothing() {
        new ApplicationContextRunner()
                .withConfiguration(AutoConfigurations.of(OutboxAutoConfiguration.class))
                .withPropertyValues("outbox.enabled=false", "outbox.table=not valid but unused")
                .run(ctx -> {
                    OutboxEventService outbox = ctx.getBean(OutboxEventService.class);
                    assertThat(outbox).isInstanceOf(NoOpOutboxEventService.class);
                    // No transaction, no default aggregate type, no DataSource: still nothing happens.
                    assertThat(outbox.createEvent("o-1", "OrderCreated", new Object())).isNull();
                    assertThat(outbox.createEvent("order", "o-1", "OrderCreated", new Object(), null, null)).isNull();
                });
    }

    @Test
    void applicationBeansWin() {
        OutboxEventService own = new NoOpOutboxEventService();
        OutboxTraceContext trace = () -> "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        runner.withBean(OutboxEventService.class, () -> own).withBean(OutboxTraceContext.class, () -> trace)
                .run(ctx -> {
                    assertThat(ctx.getBean(OutboxEventService.class)).isSameAs(own);
                    assertThat(ctx.getBean(OutboxTraceContext.class)).isSameAs(trace);
                });
    }

    @Test
    void tracingIsOptional() {
        runner.withClassLoader(new FilteredClassLoader(Tracer.class)).run(ctx -> {
            assertThat(ctx).hasSingleBean(OutboxEventService.class);
            assertThat(ctx.getBean(OutboxTraceContext.class).traceparent()).isNull();
        });
        // Micrometer Tracing present but no Tracer bean: no header, no error.
        runner.run(ctx -> assertThat(ctx.getBean(OutboxTraceContext.class).traceparent()).isNull());
    }

    @Test
    void invalidArgumentsAreRefusedBeforeAnythingElse() {
        runner.run(ctx -> {
            OutboxEventService outbox = ctx.getBean(OutboxEventService.class);
            assertThatExceptionOfType(IllegalArgumentException.class)
                    .isThrownBy(() -> outbox.createEvent(" ", "o-1", "OrderCreated", "{}", null, null))
                    .withMessageContaining("aggregateType");
            assertThatExceptionOfType(IllegalArgumentException.class)
                    .isThrownBy(() -> outbox.createEvent("order", "o-1", "", "{}", null, null))
                    .withMessageContaining("eventType");
            assertThatExceptionOfType(IllegalArgumentException.class)
                    .isThrownBy(() -> outbox.createEvent("order", "o-1", "OrderCreated", "{}", null, " "))
                    .withMessageContaining("topic");
            assertThatExceptionOfType(NullPointerException.class)
                    .isThrownBy(() -> outbox.createEvent("order", "o-1", "OrderCreated", null, null, null))
                    .withMessageContaining("event");
        });
        verifyNoInteractions(dataSource);
    }
}
