package dev.outboxrelay.spring;

import org.springframework.transaction.IllegalTransactionStateException;

/**
 * {@link OutboxEventService#createEvent} was called where its row would not share a transaction
 * with the business change. Nothing was written.
 */
public class OutboxTransactionRequiredException extends IllegalTransactionStateException {

    public OutboxTransactionRequiredException(String message) {
        super(message);
    }
}
