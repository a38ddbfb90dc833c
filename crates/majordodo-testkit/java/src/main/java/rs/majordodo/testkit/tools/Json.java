package rs.majordodo.testkit.tools;

import java.util.List;

/**
 * Builds one JSON object per output line, so callers can parse tool output line by line.
 *
 * <p>Only what the tools print is supported: strings, integers, doubles, booleans and lists of
 * strings.
 */
final class Json {
    private final StringBuilder out = new StringBuilder("{");
    private boolean first = true;

    private Json() {}

    /** Starts an object whose {@code "event"} field names what the line reports. */
    static Json event(String event) {
        return new Json().put("event", event);
    }

    Json put(String key, String value) {
        key(key);
        quote(value);
        return this;
    }

    Json put(String key, long value) {
        key(key);
        out.append(value);
        return this;
    }

    Json put(String key, double value) {
        key(key);
        if (Double.isNaN(value) || Double.isInfinite(value)) {
            out.append("null");
        } else {
            out.append(value);
        }
        return this;
    }

    Json put(String key, boolean value) {
        key(key);
        out.append(value);
        return this;
    }

    Json put(String key, List<String> values) {
        key(key);
        out.append('[');
        for (int i = 0; i < values.size(); i++) {
            if (i > 0) {
                out.append(',');
            }
            quote(values.get(i));
        }
        out.append(']');
        return this;
    }

    /** Prints the object as one line on standard output. */
    void print() {
        out.append('}');
        System.out.println(out);
        System.out.flush();
    }

    private void key(String key) {
        if (!first) {
            out.append(',');
        }
        first = false;
        quote(key);
        out.append(':');
    }

    private void quote(String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }
}
