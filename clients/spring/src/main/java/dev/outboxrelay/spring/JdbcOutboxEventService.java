package dev.outboxrelay.spring;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Types;
import java.time.OffsetDateTime;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import javax.sql.DataSource;
import org.springframework.jdbc.core.ConnectionCallback;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.transaction.support.TransactionSynchronizationManager;

/**
 * {@link OutboxEventService} that inserts one row per event with plain SQL on the connection of
 * the caller's transaction ({@link JdbcTemplate} finds it through Spring's transaction
 * synchronization — the same connection a {@code JpaTransactionManager} or
 * {@code DataSourceTransactionManager} uses for the business change). Why SQL rather than
 * {@code EntityManager.persist}: see {@link OutboxEvent}.
 */
public class JdbcOutboxEventService implements OutboxEventService {

    private final JdbcTemplate jdbc;
    private final ObjectMapper objectMapper;
    private final OutboxTraceContext traceContext;
    private final String defaultAggregateType;
    private final String insertSql;

    /**
     * @param table the outbox table (validated: the name is part of the SQL text)
     * @param defaultAggregateType for the short form; {@code null} if not configured
     */
    public JdbcOutboxEventService(DataSource dataSource, ObjectMapper objectMapper, OutboxTraceContext traceContext,
            OutboxTableName table, String defaultAggregateType) {
        this.jdbc = new JdbcTemplate(Objects.requireNonNull(dataSource, "dataSource"));
        this.objectMapper = Objects.requireNonNull(objectMapper, "objectMapper");
        this.traceContext = Objects.requireNonNull(traceContext, "traceContext");
        if (defaultAggregateType != null && defaultAggregateType.isBlank()) {
            throw new IllegalArgumentException("defaultAggregateType must not be blank");
        }
        this.defaultAggregateType = defaultAggregateType;
        // status, created_at, retry_count, version and txid are left to the table's defaults:
        // txid in particular must be the inserting transaction's (pg_current_xact_id()).
        this.insertSql = "INSERT INTO " + table
                + " (aggregate_type, aggregate_id, event_type, event_data, headers, topic)"
                + " VALUES (?, ?, ?, CAST(? AS jsonb), CAST(? AS jsonb), ?)"
                + " RETURNING id, created_at, status, retry_count, version, txid::text";
    }

    @Override
    public OutboxEvent createEvent(Object aggregateId, String eventType, Object event) {
        if (defaultAggregateType == null) {
            throw new IllegalStateException("outbox.default-aggregate-type is not set: the short form "
                    + "createEvent(aggregateId, eventType, event) needs it (the aggregate_type column routes "
                    + "the topic and cannot be empty); set it, or call createEvent(aggregateType, ...). "
                    + "Nothing was written.");
        }
        return createEvent(defaultAggregateType, aggregateId, eventType, event, null, null);
    }

    @Override
    public OutboxEvent createEvent(String aggregateType, Object aggregateId, String eventType, Object event,
            Map<String, ?> headers, String topic) {
        requireText("aggregateType", aggregateType);
        Objects.requireNonNull(aggregateId, "aggregateId");
        String key = String.valueOf(aggregateId);
        requireText("aggregateId", key);
        requireText("eventType", eventType);
        Objects.requireNonNull(event, "event");
        if (topic != null) {
            requireText("topic", topic);
        }
        requireTransaction();

        String eventData = toJson(event, "event of type " + event.getClass().getName());
        Map<String, Object> allHeaders = new LinkedHashMap<>();
        String traceparent = traceContext.traceparent();
        if (traceparent != null) {
            allHeaders.put("traceparent", traceparent);
        }
        if (headers != null) {
            allHeaders.putAll(headers);
        }
        String headersJson = allHeaders.isEmpty() ? null : toJson(allHeaders, "headers");

        OutboxEvent row = new OutboxEvent(aggregateType, key, eventType, eventData,
                allHeaders.isEmpty() ? null : allHeaders, topic);
        return jdbc.execute((ConnectionCallback<OutboxEvent>) con -> insert(con, row, headersJson));
    }

    private OutboxEvent insert(Connection con, OutboxEvent row, String headersJson) throws java.sql.SQLException {
        // A transaction is active, but is it on this connection? A transaction of another
        // DataSource (or transaction manager) leaves this one in auto-commit: the row would
        // commit on its own at once.
        if (con.getAutoCommit()) {
            throw new OutboxTransactionRequiredException("OutboxEventService.createEvent: a transaction is active "
                    + "but not on the DataSource the outbox is written to (its connection is in auto-commit), so "
                    + "the outbox row would commit on its own. Run the business change and createEvent under the "
                    + "transaction manager of that DataSource. Nothing was written.");
        }
        try (PreparedStatement ps = con.prepareStatement(insertSql)) {
            ps.setString(1, row.getAggregateType());
            ps.setString(2, row.getAggregateId());
            ps.setString(3, row.getEventType());
            ps.setString(4, row.getEventData());
            if (headersJson == null) {
                ps.setNull(5, Types.VARCHAR);
            } else {
                ps.setString(5, headersJson);
            }
            if (row.getTopic() == null) {
                ps.setNull(6, Types.VARCHAR);
            } else {
                ps.setString(6, row.getTopic());
            }
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                row.written(rs.getLong(1), rs.getObject(2, OffsetDateTime.class), rs.getString(3), rs.getInt(4),
                        rs.getInt(5), rs.getString(6));
            }
        }
        return row;
    }

    private static void requireTransaction() {
        if (!TransactionSynchronizationManager.isActualTransactionActive()) {
            throw new OutboxTransactionRequiredException("OutboxEventService.createEvent needs the caller's "
                    + "transaction (call it from a @Transactional method or a TransactionTemplate): an outbox row "
                    + "committed on its own would announce a change that may never commit. Nothing was written.");
        }
        if (TransactionSynchronizationManager.isCurrentTransactionReadOnly()) {
            throw new OutboxTransactionRequiredException("OutboxEventService.createEvent was called in a read-only "
                    + "transaction; the outbox row needs a read-write one. Nothing was written.");
        }
    }

    private String toJson(Object value, String what) {
        try {
            return objectMapper.writeValueAsString(value);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(what + " cannot be serialized to JSON: " + e.getOriginalMessage()
                    + ". Nothing was written.", e);
        }
    }

    private static void requireText(String name, String value) {
        if (value == null || value.isBlank()) {
            throw new IllegalArgumentException(name + " must not be null or blank");
        }
    }
}
