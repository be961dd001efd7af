package dev.outboxrelay.spring;

import static org.assertj.core.api.Assertions.assertThatExceptionOfType;
import static org.mockito.ArgumentMatchers.anyString;
import static org.mockito.Mockito.mock;
import static org.mockito.Mockito.never;
import static org.mockito.Mockito.verify;
import static org.mockito.Mockito.when;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.sql.Connection;
import javax.sql.DataSource;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.springframework.transaction.support.TransactionSynchronizationManager;

/**
 * The refusals that need a transaction to be "active" in ways a single-DataSource test
 * application cannot produce; the end-to-end behaviour is in the *IT classes.
 */
class JdbcOutboxEventServiceTest {

    private final DataSource dataSource = mock(DataSource.class);
    private final Connection connection = mock(Connection.class);
    private final OutboxEventService outbox = new JdbcOutboxEventService(dataSource, new ObjectMapper(),
            OutboxTraceContext.none(), OutboxTableName.parse("public.outbox"), "order");

    @AfterEach
    void clearTransactionState() {
        TransactionSynchronizationManager.clear();
    }

    /** A transaction of another DataSource is active: this one's connection is in auto-commit. */
    @Test
    void transactionOnAnotherDataSourceIsRefusedBeforeTheInsert() throws Exception {
        when(dataSource.getConnection()).thenReturn(connection);
        when(connection.getAutoCommit()).thenReturn(true);
        TransactionSynchronizationManager.initSynchronization();
        TransactionSynchronizationManager.setActualTransactionActive(true);

        assertThatExceptionOfType(OutboxTransactionRequiredException.class)
                .isThrownBy(() -> outbox.createEvent("o-1", "OrderCreated", java.util.Map.of("total", 1)))
                .withMessageContaining("not on the DataSource the outbox is written to");
        verify(connection, never()).prepareStatement(anyString());
    }

    @Test
    void readOnlyTransactionIsRefused() {
        TransactionSynchronizationManager.initSynchronization();
        TransactionSynchronizationManager.setActualTransactionActive(true);
        TransactionSynchronizationManager.setCurrentTransactionReadOnly(true);

        assertThatExceptionOfType(OutboxTransactionRequiredException.class)
                .isThrownBy(() -> outbox.createEvent("o-1", "OrderCreated", java.util.Map.of("total", 1)))
                .withMessageContaining("read-only");
    }
}
