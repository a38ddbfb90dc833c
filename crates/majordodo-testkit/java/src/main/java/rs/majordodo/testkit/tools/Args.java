package rs.majordodo.testkit.tools;

import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

/**
 * Command-line arguments of the form {@code --name value} and {@code --flag}.
 *
 * <p>Each tool declares which names take a value and which are flags; anything else is a usage
 * error, so a typo never silently falls back to a default.
 */
final class Args {
    private final Map<String, String> values = new HashMap<>();
    private final Set<String> flags = new HashSet<>();

    private Args() {}

    /** Parses {@code argv}; {@code valueNames} take one value each, {@code flagNames} none. */
    static Args parse(String[] argv, Set<String> valueNames, Set<String> flagNames) {
        Args args = new Args();
        for (int i = 0; i < argv.length; i++) {
            String arg = argv[i];
            if (!arg.startsWith("--")) {
                throw new UsageException("unexpected argument: " + arg);
            }
            String name = arg.substring(2);
            if (flagNames.contains(name)) {
                args.flags.add(name);
            } else if (valueNames.contains(name)) {
                if (i + 1 >= argv.length) {
                    throw new UsageException("missing value for --" + name);
                }
                args.values.put(name, argv[++i]);
            } else {
                throw new UsageException("unknown option --" + name);
            }
        }
        return args;
    }

    boolean flag(String name) {
        return flags.contains(name);
    }

    boolean has(String name) {
        return values.containsKey(name);
    }

    String string(String name, String defaultValue) {
        return values.getOrDefault(name, defaultValue);
    }

    String required(String name) {
        String value = values.get(name);
        if (value == null) {
            throw new UsageException("--" + name + " is required");
        }
        return value;
    }

    long longValue(String name, long defaultValue) {
        String value = values.get(name);
        if (value == null) {
            return defaultValue;
        }
        try {
            return Long.parseLong(value);
        } catch (NumberFormatException e) {
            throw new UsageException("--" + name + " expects an integer, got " + value);
        }
    }

    int intValue(String name, int defaultValue) {
        long value = longValue(name, defaultValue);
        if (value < Integer.MIN_VALUE || value > Integer.MAX_VALUE) {
            throw new UsageException("--" + name + " is out of range: " + value);
        }
        return (int) value;
    }

    /** A wrong command line: the tool prints the message and exits with status 2. */
    static final class UsageException extends RuntimeException {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }
}
