package dev.outboxrelay.spring;

import java.util.regex.Pattern;

/**
 * A validated {@code schema.table} name, rendered for SQL exactly as outbox-relay renders it
 * (unquoted, so PostgreSQL folds case the same way for both). Validation is what makes
 * putting it into SQL text safe: only letters, digits and {@code _} get through.
 */
public final class OutboxTableName {

    private static final Pattern IDENT = Pattern.compile("[A-Za-z_][A-Za-z0-9_]{0,62}");

    private final String schema;
    private final String name;

    private OutboxTableName(String schema, String name) {
        this.schema = schema;
        this.name = name;
    }

    /**
     * Parses {@code schema.table} or {@code table} (meaning {@code public.table}).
     *
     * @throws IllegalArgumentException naming what is wrong with the value
     */
    public static OutboxTableName parse(String value) {
        if (value == null || value.isEmpty()) {
            throw new IllegalArgumentException("must not be empty");
        }
        int dot = value.indexOf('.');
        String schema = dot < 0 ? "public" : value.substring(0, dot);
        String name = dot < 0 ? value : value.substring(dot + 1);
        if (!IDENT.matcher(schema).matches() || !IDENT.matcher(name).matches()) {
            throw new IllegalArgumentException("must be schema.table or table, each an identifier: "
                    + "letters, digits and _, starting with a letter or _, at most 63 chars");
        }
        return new OutboxTableName(schema, name);
    }

    public String schema() {
        return schema;
    }

    public String name() {
        return name;
    }

    /** {@code schema.name}, ready for SQL text. */
    @Override
    public String toString() {
        return schema + "." + name;
    }
}
