package dev.outboxrelay.spring.it;

/**
 * Where the services scripts/test-spring.sh started are: PostgreSQL (with outbox-relay init
 * applied and the relay running against it) and Kafka. Missing values fail the tests — they
 * are never skipped.
 */
final class ItEnvironment {

    private ItEnvironment() {
    }

    /** {@code jdbc:postgresql://127.0.0.1:PORT/DB}. */
    static String jdbcUrl() {
        return require("OUTBOX_IT_JDBC_URL");
    }

    static String dbUser() {
        String user = System.getenv("OUTBOX_IT_DB_USER");
        return user == null || user.isEmpty() ? "postgres" : user;
    }

    /** {@code host:port} of the broker the relay publishes to. */
    static String kafkaBootstrap() {
        return require("OUTBOX_IT_KAFKA_BOOTSTRAP");
    }

    private static String require(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalStateException(name + " is not set: these tests need PostgreSQL, Kafka and a running "
                    + "outbox-relay; run them with `bash scripts/test-spring.sh` from the repository root");
        }
        return v;
    }
}
