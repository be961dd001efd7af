package dev.outboxrelay.spring;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.GeneratedValue;
import jakarta.persistence.GenerationType;
import jakarta.persistence.Id;
import jakarta.persistence.Table;
import java.time.OffsetDateTime;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.hibernate.annotations.JdbcTypeCode;
import org.hibernate.type.SqlTypes;

/**
 * One row of the outbox table that {@code outbox-relay init} creates ({@code sql/001_outbox_table.sql}):
 * the relay publishes it to Kafka with key {@link #getAggregateId()}, value
 * {@link #getEventData()} and the entries of {@link #getHeaders()} as message headers.
 *
 * <p><b>How it is written.</b> {@link OutboxEventService} does not {@code persist} this entity; it
 * inserts it with one SQL statement on the transaction's connection and returns it filled with
 * what the database generated. That keeps the write independent of how the application set up
 * JPA: the entity need not be in the persistence unit (so {@code @EntityScan} and Hibernate's
 * {@code ddl-auto=create-drop/update} never see the relay's table — Hibernate re-creating it
 * would lose the {@code txid} default and its place in the publication), the table name comes
 * from {@code outbox.table} at runtime (an annotation cannot), and applications on plain JDBC
 * work too.
 *
 * <p><b>Reading with JPA.</b> The mapping is complete, for queries and monitoring: add the package
 * to {@code @EntityScan} (with {@code ddl-auto=none} or {@code validate}). It maps {@code outbox}
 * on the connection's {@code search_path}; for another {@code outbox.table} override the table in
 * {@code orm.xml}. Columns the database fills ({@code status}, {@code created_at},
 * {@code retry_count}, {@code version}, {@code txid}) are not insertable, so a {@code persist}
 * leaves them to their defaults; the janitor owns {@code status} and {@code processed_at}.
 */
@Entity
@Table(name = "outbox")
public class OutboxEvent {

    /** Row id; the relay sends it as the {@code id} header, consumers deduplicate by it. */
    @Id
    @GeneratedValue(strategy = GenerationType.IDENTITY)
    @Column(name = "id", insertable = false, updatable = false)
    private Long id;

    /** Routes the topic: the relay's default template is {@code outbox.{aggregate_type}}. */
    @Column(name = "aggregate_type", nullable = false)
    private String aggregateType;

    /** Kafka key: one aggregate's events stay in one partition, in commit order. */
    @Column(name = "aggregate_id", nullable = false)
    private String aggregateId;

    /** Sent as the {@code event_type} header. */
    @Column(name = "event_type", nullable = false)
    private String eventType;

    /** The message value: JSON text (jsonb; the relay sends it as PostgreSQL renders it). */
    @JdbcTypeCode(SqlTypes.JSON)
    @Column(name = "event_data", nullable = false)
    private String eventData;

    /** Extra message headers (jsonb object; string values as-is, others as JSON text). */
    @JdbcTypeCode(SqlTypes.JSON)
    @Column(name = "headers")
    private Map<String, Object> headers;

    /** Topic override for this row; {@code null}: the relay's topic template decides. */
    @Column(name = "topic")
    private String topic;

    /** Insert time (database default {@code now()}: the transaction's start). */
    @Column(name = "created_at", insertable = false, updatable = false)
    private OffsetDateTime createdAt;

    /** When the janitor marked the row PROCESSED. */
    @Column(name = "processed_at", insertable = false, updatable = false)
    private OffsetDateTime processedAt;

    /** PENDING (default), PROCESSED or FAILED: owned by the relay. */
    @Column(name = "status", insertable = false, updatable = false)
    private String status;

    /** Delivery attempts of a FAILED row. */
    @Column(name = "retry_count", insertable = false, updatable = false)
    private Integer retryCount;

    /** Event schema version for consumers (database default 1). */
    @Column(name = "version", insertable = false, updatable = false)
    private Integer version;

    /**
     * Inserting transaction ({@code xid8 DEFAULT pg_current_xact_id()}), as text: lets the
     * janitor prove the row was published. Never set by applications.
     */
    @Column(name = "txid", columnDefinition = "xid8", insertable = false, updatable = false)
    private String txid;

    /** For JPA. */
    protected OutboxEvent() {
    }

    /**
     * A new, unwritten event. {@code eventData} is JSON text; {@code headers} and {@code topic}
     * may be {@code null}.
     */
    public OutboxEvent(String aggregateType, String aggregateId, String eventType, String eventData,
            Map<String, Object> headers, String topic) {
        this.aggregateType = aggregateType;
        this.aggregateId = aggregateId;
        this.eventType = eventType;
        this.eventData = eventData;
        this.headers = headers == null ? null : Collections.unmodifiableMap(new LinkedHashMap<>(headers));
        this.topic = topic;
    }

    /** Fills in what the insert's {@code RETURNING} reported. */
    void written(long id, OffsetDateTime createdAt, String status, int retryCount, int version, String txid) {
        this.id = id;
        this.createdAt = createdAt;
        this.status = status;
        this.retryCount = retryCount;
        this.version = version;
        this.txid = txid;
    }

    public Long getId() {
        return id;
    }

    public String getAggregateType() {
        return aggregateType;
    }

    public String getAggregateId() {
        return aggregateId;
    }

    public String getEventType() {
        return eventType;
    }

    public String getEventData() {
        return eventData;
    }

    public Map<String, Object> getHeaders() {
        return headers;
    }

    public String getTopic() {
        return topic;
    }

    public OffsetDateTime getCreatedAt() {
        return createdAt;
    }

    public OffsetDateTime getProcessedAt() {
        return processedAt;
    }

    public String getStatus() {
        return status;
    }

    public Integer getRetryCount() {
        return retryCount;
    }

    public Integer getVersion() {
        return version;
    }

    public String getTxid() {
        return txid;
    }

    @Override
    public String toString() {
        return "OutboxEvent{id=" + id + ", aggregateType=" + aggregateType + ", aggregateId=" + aggregateId
                + ", eventType=" + eventType + ", topic=" + topic + ", status=" + status + "}";
    }
}
