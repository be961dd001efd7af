package dev.outboxrelay.spring;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import io.micrometer.tracing.Tracer;
import javax.sql.DataSource;
import org.springframework.beans.factory.ObjectProvider;
import org.springframework.boot.autoconfigure.AutoConfiguration;
import org.springframework.boot.autoconfigure.condition.ConditionalOnClass;
import org.springframework.boot.autoconfigure.condition.ConditionalOnMissingBean;
import org.springframework.boot.autoconfigure.condition.ConditionalOnMissingClass;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.boot.context.properties.source.InvalidConfigurationPropertyValueException;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * Provides {@link OutboxEventService}: the JDBC implementation when {@code outbox.enabled} is
 * true (the default), the no-op one when it is false. Either can be replaced by declaring an
 * {@code OutboxEventService} bean; the trace source by declaring an {@link OutboxTraceContext}.
 *
 * <p>Startup fails, naming the key, when {@code outbox.table} is not a valid table name, when
 * {@code outbox.default-aggregate-type} is set but blank, or when there is no single (or
 * {@code @Primary}) {@code DataSource}. Nothing touches the database at startup.
 */
@AutoConfiguration
@EnableConfigurationProperties(OutboxProperties.class)
public class OutboxAutoConfiguration {

    @Bean
    @ConditionalOnMissingBean
    @ConditionalOnProperty(prefix = "outbox", name = "enabled", havingValue = "true", matchIfMissing = true)
    OutboxEventService outboxEventService(OutboxProperties properties, ObjectProvider<DataSource> dataSource,
            ObjectProvider<ObjectMapper> objectMapper, OutboxTraceContext traceContext) {
        OutboxTableName table;
        try {
            table = OutboxTableName.parse(properties.getTable());
        } catch (IllegalArgumentException e) {
            throw new InvalidConfigurationPropertyValueException("outbox.table", properties.getTable(), e.getMessage());
        }
        String defaultType = properties.getDefaultAggregateType();
        if (defaultType != null && defaultType.isBlank()) {
            throw new InvalidConfigurationPropertyValueException("outbox.default-aggregate-type", defaultType,
                    "must not be blank: it fills the aggregate_type column, which routes the topic; "
                            + "remove the key or give it a value");
        }
        DataSource ds = dataSource.getIfUnique();
        if (ds == null) {
            throw new IllegalStateException("outbox.enabled=true needs one DataSource bean (or a @Primary one): "
                    + "outbox rows are written on the connection of the business transaction");
        }
        // The application's mapper (its modules, naming and date settings); a plain one with the
        // modules on the class path if the application has none.
        ObjectMapper mapper = objectMapper.getIfAvailable(() -> JsonMapper.builder().findAndAddModules().build());
        return new JdbcOutboxEventService(ds, mapper, traceContext, table, defaultType);
    }

    @Bean
    @ConditionalOnMissingBean
    @ConditionalOnProperty(prefix = "outbox", name = "enabled", havingValue = "false")
    OutboxEventService disabledOutboxEventService() {
        return new NoOpOutboxEventService();
    }

    @Configuration(proxyBeanMethods = false)
    @ConditionalOnClass(Tracer.class)
    static class MicrometerTracingConfiguration {

        @Bean
        @ConditionalOnMissingBean
        OutboxTraceContext outboxTraceContext(ObjectProvider<Tracer> tracer) {
            return new MicrometerOutboxTraceContext(tracer);
        }
    }

    @Configuration(proxyBeanMethods = false)
    @ConditionalOnMissingClass("io.micrometer.tracing.Tracer")
    static class NoTracingConfiguration {

        @Bean
        @ConditionalOnMissingBean
        OutboxTraceContext outboxTraceContext() {
            return OutboxTraceContext.none();
        }
    }
}
