package dev.outboxrelay.spring;

import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * {@code outbox.*} settings. The names match outbox-relay's own keys where both sides must
 * agree ({@code outbox.table}), so one value can be shared by the application and the relay.
 */
@ConfigurationProperties(prefix = "outbox")
public class OutboxProperties {

    // Field comments are plain text: the configuration processor copies them into the
    // metadata IDEs show.

    /**
     * Whether createEvent writes outbox rows. When false the OutboxEventService bean still
     * exists and every call is a no-op returning null: no row, no transaction required.
     */
    private boolean enabled = true;

    /**
     * Outbox table, "schema.table" or "table" (meaning public.table); the relay's outbox.table.
     * Letters, digits and _, starting with a letter or _, at most 63 characters per part.
     */
    private String table = "public.outbox";

    /**
     * Aggregate type of events written with the short form createEvent(aggregateId,
     * eventType, event). It routes the topic (relay default: outbox.{aggregate_type}). A blank
     * value fails startup; without a value the short form throws on use.
     */
    private String defaultAggregateType;

    public boolean isEnabled() {
        return enabled;
    }

    public void setEnabled(boolean enabled) {
        this.enabled = enabled;
    }

    public String getTable() {
        return table;
    }

    public void setTable(String table) {
        this.table = table;
    }

    public String getDefaultAggregateType() {
        return defaultAggregateType;
    }

    public void setDefaultAggregateType(String defaultAggregateType) {
        this.defaultAggregateType = defaultAggregateType;
    }
}
