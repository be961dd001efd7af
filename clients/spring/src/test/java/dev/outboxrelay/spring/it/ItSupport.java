package dev.outboxrelay.spring.it;

import org.springframework.test.context.DynamicPropertyRegistry;
import org.springframework.test.context.DynamicPropertySource;

/** Connection settings shared by the end-to-end test classes (each has its own context). */
abstract class ItSupport {

    @DynamicPropertySource
    static void services(DynamicPropertyRegistry registry) {
        registry.add("spring.datasource.url", ItEnvironment::jdbcUrl);
        registry.add("spring.datasource.username", ItEnvironment::dbUser);
    }
}
