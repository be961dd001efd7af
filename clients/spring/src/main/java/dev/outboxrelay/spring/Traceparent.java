package dev.outboxrelay.spring;

import java.util.regex.Pattern;

/** W3C Trace Context {@code traceparent} formatting (version 00). */
final class Traceparent {

    private static final Pattern HEX = Pattern.compile("[0-9a-f]+");

    private Traceparent() {
    }

    /**
     * {@code 00-traceId-spanId-flags}, or {@code null} when the ids are not valid W3C ids. A
     * 64-bit trace id (16 hex, e.g. Brave without 128-bit ids) is left-padded with zeros, as
     * the specification asks.
     */
    static String format(String traceId, String spanId, Boolean sampled) {
        if (traceId == null || spanId == null) {
            return null;
        }
        String trace = traceId.toLowerCase();
        String span = spanId.toLowerCase();
        if (trace.length() == 16) {
            trace = "0000000000000000" + trace;
        }
        if (trace.length() != 32 || span.length() != 16 || !HEX.matcher(trace).matches()
                || !HEX.matcher(span).matches() || isZero(trace) || isZero(span)) {
            return null;
        }
        return "00-" + trace + "-" + span + "-" + (Boolean.TRUE.equals(sampled) ? "01" : "00");
    }

    private static boolean isZero(String hex) {
        return hex.chars().allMatch(c -> c == '0');
    }
}
