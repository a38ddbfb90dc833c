package rs.majordodo.testkit.tools;

import java.util.Arrays;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.bookkeeper.client.api.BookKeeper;
import org.apache.bookkeeper.client.api.WriteHandle;

/**
 * The Java client's append benchmark: one ledger, fixed-size entries, a bounded number of
 * asynchronous adds in flight, latency measured per add from submit to completion callback.
 *
 * <pre>
 * BkBench [--metadata-uri URI | --zk HOST:PORT] [--entry-size 1024] [--ensemble 3]
 *         [--write-quorum 2] [--ack-quorum 2] [--max-outstanding 100]
 *         [--count 10000 | --duration-secs S] [--warmup-count 1000]
 *         [--digest crc32c|crc32|mac|dummy] [--password TEXT] [--v2-protocol]
 * </pre>
 *
 * Output: a {@code bench_config} line, then one {@code bench_result} line with entries/s, MB/s
 * (1 MB = 10^6 bytes of payload) and latency percentiles in milliseconds (nearest rank over every
 * measured add). Warm-up adds go to the same ledger and are not measured.
 */
public final class BkBench {
    /** Upper bound on measured adds in duration mode, so the latency samples stay bounded (80 MB). */
    private static final long MAX_MEASURED = 10_000_000;

    /** Latency samples are kept in chunks of this many, allocated before their adds are submitted. */
    private static final int CHUNK = 1 << 16;

    private BkBench() {}

    public static void main(String[] argv) {
        Tools.main("BkBench", argv,
                Set.of("entry-size", "ensemble", "write-quorum", "ack-quorum", "max-outstanding", "count",
                        "duration-secs", "warmup-count"),
                Set.of(),
                BkBench::run);
    }

    private static void run(Args args) throws Exception {
        int entrySize = args.intValue("entry-size", 1024);
        int ensemble = args.intValue("ensemble", 3);
        int writeQuorum = args.intValue("write-quorum", 2);
        int ackQuorum = args.intValue("ack-quorum", 2);
        int maxOutstanding = args.intValue("max-outstanding", 100);
        long warmup = args.longValue("warmup-count", 1000);
        boolean byDuration = args.has("duration-secs");
        long count = byDuration ? MAX_MEASURED : args.longValue("count", 10_000);
        long durationNanos = byDuration ? args.longValue("duration-secs", 10) * 1_000_000_000L : Long.MAX_VALUE;
        if (entrySize < 1 || maxOutstanding < 1 || count < 1 || count > MAX_MEASURED || warmup < 0
                || durationNanos <= 0) {
            throw new Args.UsageException("sizes and counts must be positive (count at most " + MAX_MEASURED + ")");
        }

        Json.event("bench_config").put("client", "java").put("entry_size", entrySize)
                .put("ensemble", ensemble).put("write_quorum", writeQuorum).put("ack_quorum", ackQuorum)
                .put("max_outstanding", maxOutstanding).put("warmup_count", warmup)
                .put("count", byDuration ? -1 : count)
                .put("duration_secs", byDuration ? durationNanos / 1e9 : -1)
                .put("digest", Tools.digest(args).name()).put("v2_protocol", args.flag("v2-protocol"))
                .print();

        byte[] payload = Tools.sizedPayload(0, entrySize);
        try (BookKeeper bk = Tools.client(args)) {
            WriteHandle handle = bk.newCreateLedgerOp()
                    .withEnsembleSize(ensemble)
                    .withWriteQuorumSize(writeQuorum)
                    .withAckQuorumSize(ackQuorum)
                    .withDigestType(Tools.digest(args))
                    .withPassword(Tools.password(args))
                    .execute()
                    .get();

            Semaphore inFlight = new Semaphore(maxOutstanding);
            AtomicReference<Throwable> failure = new AtomicReference<>();
            for (long i = 0; i < warmup && failure.get() == null; i++) {
                inFlight.acquire();
                handle.appendAsync(payload).whenComplete((id, err) -> {
                    if (err != null) {
                        failure.compareAndSet(null, err);
                    }
                    inFlight.release();
                });
            }
            inFlight.acquire(maxOutstanding);
            inFlight.release(maxOutstanding);

            long[][] chunks = new long[(int) ((count + CHUNK - 1) / CHUNK)][];
            AtomicLong lastCompletion = new AtomicLong();
            long start = System.nanoTime();
            long submitted = 0;
            while (submitted < count && failure.get() == null
                    && (!byDuration || System.nanoTime() - start < durationNanos)) {
                int chunk = (int) (submitted / CHUNK);
                if (chunks[chunk] == null) {
                    chunks[chunk] = new long[CHUNK];
                }
                long[] samples = chunks[chunk];
                int slot = (int) (submitted % CHUNK);
                inFlight.acquire();
                long t0 = System.nanoTime();
                CompletableFuture<Long> add = handle.appendAsync(payload);
                add.whenComplete((id, err) -> {
                    long now = System.nanoTime();
                    samples[slot] = now - t0;
                    lastCompletion.accumulateAndGet(now, Math::max);
                    if (err != null) {
                        failure.compareAndSet(null, err);
                    }
                    inFlight.release();
                });
                submitted++;
            }
            inFlight.acquire(maxOutstanding);
            long elapsed = Math.max(1, lastCompletion.get() - start);

            long[] latencies = new long[(int) submitted];
            for (int i = 0; i < submitted; i++) {
                latencies[i] = chunks[i / CHUNK][i % CHUNK];
            }
            Arrays.sort(latencies);
            double seconds = elapsed / 1e9;
            Json result = Json.event("bench_result").put("client", "java").put("ledger_id", handle.getId())
                    .put("entries", submitted).put("bytes", submitted * entrySize).put("seconds", seconds)
                    .put("entries_per_sec", submitted / seconds)
                    .put("mb_per_sec", submitted * (double) entrySize / 1e6 / seconds)
                    .put("p50_ms", percentileMillis(latencies, 0.50))
                    .put("p99_ms", percentileMillis(latencies, 0.99))
                    .put("p999_ms", percentileMillis(latencies, 0.999))
                    .put("max_ms", latencies.length == 0 ? Double.NaN : latencies[latencies.length - 1] / 1e6)
                    .put("errors", failure.get() == null ? 0 : 1);
            if (failure.get() != null) {
                result.put("error", String.valueOf(failure.get()));
            }
            result.print();
            handle.close();
            if (failure.get() != null) {
                throw new IllegalStateException("an add failed", failure.get());
            }
        }
    }

    /** Nearest-rank percentile: the smallest sample with at least {@code q} of the samples at or below it. */
    private static double percentileMillis(long[] sorted, double q) {
        if (sorted.length == 0) {
            return Double.NaN;
        }
        int rank = (int) Math.ceil(q * sorted.length);
        return sorted[Math.max(0, rank - 1)] / 1e6;
    }
}
