package rs.majordodo.testkit.tools;

import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Semaphore;
import org.apache.bookkeeper.client.api.BookKeeper;
import org.apache.bookkeeper.client.api.WriteHandle;

/**
 * Creates a ledger with the official Java client, appends entries, and closes it (or leaves it
 * open), printing one JSON object per line.
 *
 * <pre>
 * BkWrite [--metadata-uri URI | --zk HOST:PORT] [--ensemble 3] [--write-quorum 2] [--ack-quorum 2]
 *         [--digest crc32c|crc32|mac|dummy] [--password TEXT] [--count 10]
 *         [--entry-size 100 | --payload-pattern 'entry-{i}'] [--max-outstanding 64]
 *         [--leave-open] [--no-hex] [--v2-protocol]
 * </pre>
 *
 * Output: a {@code created} line (ledger id, ensemble), one {@code entry} line per entry (entry id,
 * length, CRC32 and hex of the payload), then {@code closed} (last entry id, length) or
 * {@code left_open} (last add confirmed).
 */
public final class BkWrite {
    private BkWrite() {}

    public static void main(String[] argv) {
        Tools.main("BkWrite", argv,
                Set.of("ensemble", "write-quorum", "ack-quorum", "count", "entry-size", "payload-pattern",
                        "max-outstanding"),
                Set.of("leave-open", "no-hex"),
                BkWrite::run);
    }

    private record Written(CompletableFuture<Long> id, int length, long crc32, String hex) {}

    private static void run(Args args) throws Exception {
        int ensemble = args.intValue("ensemble", 3);
        int writeQuorum = args.intValue("write-quorum", 2);
        int ackQuorum = args.intValue("ack-quorum", 2);
        long count = args.longValue("count", 10);
        int entrySize = args.intValue("entry-size", 100);
        String pattern = args.string("payload-pattern", null);
        int maxOutstanding = args.intValue("max-outstanding", 64);
        boolean printHex = !args.flag("no-hex");
        if (count < 0 || entrySize < 0 || maxOutstanding < 1) {
            throw new Args.UsageException("--count and --entry-size must be >= 0, --max-outstanding >= 1");
        }

        try (BookKeeper bk = Tools.client(args)) {
            WriteHandle handle = bk.newCreateLedgerOp()
                    .withEnsembleSize(ensemble)
                    .withWriteQuorumSize(writeQuorum)
                    .withAckQuorumSize(ackQuorum)
                    .withDigestType(Tools.digest(args))
                    .withPassword(Tools.password(args))
                    .execute()
                    .get();
            long ledgerId = handle.getId();
            Json.event("created").put("ledger_id", ledgerId)
                    .put("ensemble", Tools.firstEnsemble(handle.getLedgerMetadata()))
                    .put("ensemble_size", ensemble).put("write_quorum", writeQuorum)
                    .put("ack_quorum", ackQuorum)
                    .put("digest", handle.getLedgerMetadata().getDigestType().name())
                    .print();

            // pipelined appends, at most maxOutstanding in flight; printed in entry order afterwards
            Semaphore inFlight = new Semaphore(maxOutstanding);
            List<Written> written = new ArrayList<>();
            for (long i = 0; i < count; i++) {
                byte[] payload = pattern != null ? Tools.patternPayload(i, pattern) : Tools.sizedPayload(i, entrySize);
                inFlight.acquire();
                CompletableFuture<Long> id = handle.appendAsync(payload);
                id.whenComplete((ok, err) -> inFlight.release());
                written.add(new Written(id, payload.length, Tools.crc32(payload), printHex ? Tools.hex(payload) : null));
            }
            for (Written w : written) {
                long entryId = w.id().get();
                Json line = Json.event("entry").put("ledger_id", ledgerId).put("entry_id", entryId)
                        .put("length", w.length()).put("crc32", w.crc32());
                if (w.hex() != null) {
                    line.put("hex", w.hex());
                }
                line.print();
            }

            if (args.flag("leave-open")) {
                Json.event("left_open").put("ledger_id", ledgerId)
                        .put("last_add_confirmed", handle.getLastAddConfirmed())
                        .put("last_add_pushed", handle.getLastAddPushed()).print();
                return;
            }
            handle.close();
            Json.event("closed").put("ledger_id", ledgerId)
                    .put("last_entry_id", handle.getLedgerMetadata().getLastEntryId())
                    .put("length", handle.getLedgerMetadata().getLength()).print();
        }
    }
}
