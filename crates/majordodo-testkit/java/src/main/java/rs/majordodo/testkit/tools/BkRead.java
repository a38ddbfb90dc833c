package rs.majordodo.testkit.tools;

import java.util.Base64;
import java.util.Set;
import org.apache.bookkeeper.client.api.BookKeeper;
import org.apache.bookkeeper.client.api.LedgerEntries;
import org.apache.bookkeeper.client.api.LedgerEntry;
import org.apache.bookkeeper.client.api.LedgerMetadata;
import org.apache.bookkeeper.client.api.ReadHandle;

/**
 * Opens a ledger with the official Java client (with or without recovery) and prints its state and
 * entries, one JSON object per line.
 *
 * <pre>
 * BkRead [--metadata-uri URI | --zk HOST:PORT] --ledger-id ID [--recovery] [--read-lac]
 *        [--digest crc32c|crc32|mac|dummy] [--password TEXT] [--first 0] [--last LAC]
 *        [--encoding hex|base64] [--v2-protocol]
 * </pre>
 *
 * Output: an {@code opened} line (closed flag, last add confirmed, length, ensemble), with
 * {@code --read-lac} a {@code lac} line (the LAC asked from the bookies), one {@code entry} line
 * per entry read (entry id, length, CRC32, payload as hex or base64), then {@code done}.
 */
public final class BkRead {
    /** Entries asked for in one read, so a long ledger never has to fit in memory at once. */
    private static final long READ_BATCH = 100;

    private BkRead() {}

    public static void main(String[] argv) {
        Tools.main("BkRead", argv,
                Set.of("ledger-id", "first", "last", "encoding"),
                Set.of("recovery", "read-lac"),
                BkRead::run);
    }

    private static void run(Args args) throws Exception {
        long ledgerId = args.longValue("ledger-id", -1);
        if (ledgerId < 0) {
            throw new Args.UsageException("--ledger-id is required");
        }
        String encoding = args.string("encoding", "hex");
        if (!encoding.equals("hex") && !encoding.equals("base64")) {
            throw new Args.UsageException("--encoding is hex or base64");
        }
        boolean recovery = args.flag("recovery");

        try (BookKeeper bk = Tools.client(args)) {
            ReadHandle handle = bk.newOpenLedgerOp()
                    .withLedgerId(ledgerId)
                    .withRecovery(recovery)
                    .withDigestType(Tools.digest(args))
                    .withPassword(Tools.password(args))
                    .execute()
                    .get();
            LedgerMetadata metadata = handle.getLedgerMetadata();
            Json.event("opened").put("ledger_id", ledgerId).put("recovery", recovery)
                    .put("closed", handle.isClosed()).put("state", metadata.getState().name())
                    .put("last_add_confirmed", handle.getLastAddConfirmed())
                    .put("length", handle.getLength())
                    .put("ensemble", Tools.firstEnsemble(metadata))
                    .put("digest", metadata.getDigestType().name())
                    .print();

            long lac = handle.getLastAddConfirmed();
            if (args.flag("read-lac")) {
                lac = handle.readLastAddConfirmed();
                Json.event("lac").put("ledger_id", ledgerId).put("last_add_confirmed", lac).print();
            }
            long first = args.longValue("first", 0);
            long last = args.longValue("last", lac);
            long read = 0;
            for (long from = first; from <= last; from += READ_BATCH) {
                long to = Math.min(last, from + READ_BATCH - 1);
                try (LedgerEntries entries = handle.read(from, to)) {
                    for (LedgerEntry entry : entries) {
                        byte[] payload = entry.getEntryBytes();
                        Json line = Json.event("entry").put("ledger_id", ledgerId)
                                .put("entry_id", entry.getEntryId()).put("length", payload.length)
                                .put("crc32", Tools.crc32(payload));
                        if (encoding.equals("hex")) {
                            line.put("hex", Tools.hex(payload));
                        } else {
                            line.put("base64", Base64.getEncoder().encodeToString(payload));
                        }
                        line.print();
                        read++;
                    }
                }
            }
            Json.event("done").put("ledger_id", ledgerId).put("entries", read).print();
            handle.close();
        }
    }
}
