package dev.outboxrelay.spring.it;

import dev.outboxrelay.spring.OutboxEventService;
import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Transactional;

/** The plan's usage example, unchanged but for the failing variant the tests need. */
@Service
public class OrderEventProcessor {

    private final OrderRepository orderRepository;
    private final OutboxEventService outboxEventService;

    public OrderEventProcessor(OrderRepository orderRepository, OutboxEventService outboxEventService) {
        this.orderRepository = orderRepository;
        this.outboxEventService = outboxEventService;
    }

    @Transactional
    public Order processOrder(String orderId, String customer, long totalCents) {
        Order order = orderRepository.save(new Order(orderId, customer, totalCents));
        OrderCreatedEvent orderCreatedEvent =
                new OrderCreatedEvent(order.getId(), order.getCustomer(), order.getTotalCents());
        outboxEventService.createEvent(order.getId(), "OrderCreated", orderCreatedEvent);
        return order;
    }

    /** The same work, then a failure later in the method (say, the payment is declined). */
    @Transactional
    public Order processOrderThenFail(String orderId, String customer, long totalCents) {
        processOrder(orderId, customer, totalCents);
        throw new PaymentDeclinedException(orderId);
    }

    public static class PaymentDeclinedException extends RuntimeException {
        PaymentDeclinedException(String orderId) {
            super("payment declined for order " + orderId);
        }
    }
}
