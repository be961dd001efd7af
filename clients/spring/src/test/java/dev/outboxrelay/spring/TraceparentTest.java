package dev.outboxrelay.spring;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class TraceparentTest {

    @Test
    void w3cVersion00() {
        assertThat(Traceparent.format("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true))
                .isEqualTo("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assertThat(Traceparent.format("4BF92F3577B34DA6A3CE929D0E0E4736", "00F067AA0BA902B7", false))
                .isEqualTo("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        // Sampling undecided: not sampled.
        assertThat(Traceparent.format("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", null)).endsWith("-00");
    }

    @Test
    void sixtyFourBitTraceIdsAreLeftPadded() {
        assertThat(Traceparent.format("a3ce929d0e0e4736", "00f067aa0ba902b7", true))
                .isEqualTo("00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }

    @Test
    void invalidIdsGiveNoHeader() {
        assertThat(Traceparent.format("", "", true)).isNull(); // Micrometer's no-op span
        assertThat(Traceparent.format(null, "00f067aa0ba902b7", true)).isNull();
        assertThat(Traceparent.format("00000000000000000000000000000000", "00f067aa0ba902b7", true)).isNull();
        assertThat(Traceparent.format("4bf92f3577b34da6a3ce929d0e0e4736", "0000000000000000", true)).isNull();
        assertThat(Traceparent.format("4bf92f3577b34da6a3ce929d0e0e47", "00f067aa0ba902b7", true)).isNull();
        assertThat(Traceparent.format("4bf92f3577b34da6a3ce929d0e0e473g", "00f067aa0ba902b7", true)).isNull();
    }
}
