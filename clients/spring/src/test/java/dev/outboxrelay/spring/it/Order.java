package dev.outboxrelay.spring.it;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** The business row. */
@Entity
@Table(name = "orders")
public class Order {

    @Id
    private String id;

    @Column(nullable = false)
    private String customer;

    @Column(name = "total_cents", nullable = false)
    private long totalCents;

    protected Order() {
    }

    public Order(String id, String customer, long totalCents) {
        this.id = id;
        this.customer = customer;
        this.totalCents = totalCents;
    }

    public String getId() {
        return id;
    }

    public String getCustomer() {
        return customer;
    }

    public long getTotalCents() {
        return totalCents;
    }
}
