package dev.outboxrelay.spring;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatIllegalArgumentException;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

class OutboxTableNameTest {

    @Test
    void schemaQualifiedAndBareNamesLikeTheRelay() {
        assertThat(OutboxTableName.parse("public.outbox")).hasToString("public.outbox");
        assertThat(OutboxTableName.parse("app.events_outbox").schema()).isEqualTo("app");
        OutboxTableName bare = OutboxTableName.parse("my_outbox");
        assertThat(bare.schema()).isEqualTo("public");
        assertThat(bare.name()).isEqualTo("my_outbox");
        assertThat(OutboxTableName.parse("_x." + "a".repeat(63))).hasToString("_x." + "a".repeat(63));
    }

    // Everything that could change the SQL the name is pasted into is refused.
    @ParameterizedTest
    @ValueSource(strings = {"", ".", "public.", ".outbox", "a.b.c", "1outbox", "out-box", "out box",
            "outbox;drop table x", "\"Outbox\"", "public.outbox--", "ünicode"})
    void refusesWhatIsNotAnIdentifier(String value) {
        assertThatIllegalArgumentException().isThrownBy(() -> OutboxTableName.parse(value));
    }

    @Test
    void refusesOverlongParts() {
        assertThatIllegalArgumentException().isThrownBy(() -> OutboxTableName.parse("a".repeat(64)));
    }
}
