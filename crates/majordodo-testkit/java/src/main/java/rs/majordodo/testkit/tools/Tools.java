package rs.majordodo.testkit.tools;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.zip.CRC32;
import org.apache.bookkeeper.client.api.BKException;
import org.apache.bookkeeper.client.api.BookKeeper;
import org.apache.bookkeeper.client.api.DigestType;
import org.apache.bookkeeper.client.api.LedgerMetadata;
import org.apache.bookkeeper.conf.ClientConfiguration;
import org.apache.bookkeeper.net.BookieId;

/** What the three tools share: client setup, option names, payloads and the exit protocol. */
final class Tools {
    /** Environment variable the Rust harness sets to the cluster's metadata service URI. */
    static final String METADATA_URI_ENV = "MAJORDODO_TESTKIT_METADATA_URI";

    /** Exit status of a wrong command line. */
    static final int EXIT_USAGE = 2;

    /** Exit status of a BookKeeper or other runtime failure. */
    static final int EXIT_FAILURE = 1;

    /** Options every tool accepts (each takes a value). */
    static final Set<String> COMMON_VALUES =
            Set.of("metadata-uri", "zk", "ledgers-root", "digest", "password", "zk-timeout-ms");

    /** Flags every tool accepts. */
    static final Set<String> COMMON_FLAGS = Set.of("v2-protocol");

    private Tools() {}

    /** The body of a tool; it returns normally on success. */
    interface Body {
        void run(Args args) throws Exception;
    }

    static Set<String> union(Set<String> a, Set<String> b) {
        Set<String> all = new HashSet<>(a);
        all.addAll(b);
        return all;
    }

    /**
     * Runs a tool body and exits the JVM: 0 on success, {@link #EXIT_USAGE} on a wrong command
     * line, {@link #EXIT_FAILURE} on any other error. Failures are also printed as an
     * {@code "error"} event on standard output, so a caller reading JSON lines sees them.
     */
    static void main(String tool, String[] argv, Set<String> values, Set<String> flags, Body body) {
        int status = 0;
        try {
            Args args = Args.parse(argv, union(COMMON_VALUES, values), union(COMMON_FLAGS, flags));
            body.run(args);
        } catch (Args.UsageException e) {
            Json.event("error").put("tool", tool).put("kind", "usage").put("message", e.getMessage()).print();
            status = EXIT_USAGE;
        } catch (Throwable e) {
            Throwable cause = e;
            // futures wrap the BookKeeper error; report the error itself
            while ((cause instanceof ExecutionException || cause instanceof CompletionException)
                    && cause.getCause() != null) {
                cause = cause.getCause();
            }
            Json error = Json.event("error").put("tool", tool).put("kind", cause.getClass().getName())
                    .put("message", String.valueOf(cause.getMessage()));
            if (cause instanceof BKException bk) {
                error.put("code", bk.getCode());
            }
            error.print();
            e.printStackTrace();
            status = EXIT_FAILURE;
        }
        System.out.flush();
        // the BookKeeper client leaves non-daemon threads behind; exit explicitly
        System.exit(status);
    }

    /** The metadata service URI from --metadata-uri, --zk (+ --ledgers-root) or the environment. */
    static String metadataUri(Args args) {
        if (args.has("metadata-uri")) {
            return args.required("metadata-uri");
        }
        if (args.has("zk")) {
            return "zk+hierarchical://" + args.required("zk") + args.string("ledgers-root", "/ledgers");
        }
        String fromEnv = System.getenv(METADATA_URI_ENV);
        if (fromEnv != null && !fromEnv.isEmpty()) {
            return fromEnv;
        }
        throw new Args.UsageException("give --metadata-uri, --zk or set " + METADATA_URI_ENV);
    }

    /** A BookKeeper client for the cluster the arguments name. */
    static BookKeeper client(Args args) throws Exception {
        ClientConfiguration conf = new ClientConfiguration();
        conf.setMetadataServiceUri(metadataUri(args));
        conf.setZkTimeout(args.intValue("zk-timeout-ms", 10_000));
        conf.setUseV2WireProtocol(args.flag("v2-protocol"));
        return BookKeeper.newBuilder(conf).build();
    }

    static DigestType digest(Args args) {
        String name = args.string("digest", "crc32c").toLowerCase(Locale.ROOT);
        return switch (name) {
            case "crc32" -> DigestType.CRC32;
            case "crc32c" -> DigestType.CRC32C;
            case "mac", "hmac" -> DigestType.MAC;
            case "dummy" -> DigestType.DUMMY;
            default -> throw new Args.UsageException("unknown --digest " + name + " (crc32, crc32c, mac, dummy)");
        };
    }

    static byte[] password(Args args) {
        return args.string("password", "").getBytes(StandardCharsets.UTF_8);
    }

    /**
     * The deterministic payload of entry {@code index} when only a size is given:
     * {@code payload[j] = (index * 7 + j) mod 251}. A Rust test can rebuild it byte for byte.
     */
    static byte[] sizedPayload(long index, int size) {
        byte[] payload = new byte[size];
        long base = Math.floorMod(index * 7, 251L);
        for (int j = 0; j < size; j++) {
            payload[j] = (byte) ((base + j) % 251);
        }
        return payload;
    }

    /** The payload of entry {@code index} from a pattern: every {@code {i}} becomes the index. */
    static byte[] patternPayload(long index, String pattern) {
        return pattern.replace("{i}", Long.toString(index)).getBytes(StandardCharsets.UTF_8);
    }

    static long crc32(byte[] data) {
        CRC32 crc = new CRC32();
        crc.update(data);
        return crc.getValue();
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    static String hex(byte[] data) {
        char[] out = new char[data.length * 2];
        for (int i = 0; i < data.length; i++) {
            out[2 * i] = HEX[(data[i] >> 4) & 0xf];
            out[2 * i + 1] = HEX[data[i] & 0xf];
        }
        return new String(out);
    }

    /** Bookie ids of the ledger's first ensemble, in ensemble order. */
    static List<String> firstEnsemble(LedgerMetadata metadata) {
        List<String> ids = new ArrayList<>();
        for (BookieId id : metadata.getAllEnsembles().firstEntry().getValue()) {
            ids.add(id.toString());
        }
        return ids;
    }
}
