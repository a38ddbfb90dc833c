package rs.majordodo.interop;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import majordodo.client.ClientConnection;
import majordodo.client.ClientException;
import majordodo.client.SubmitTaskRequest;
import majordodo.client.SubmitTaskResponse;
import majordodo.client.discovery.ZookeeperDiscoveryService;
import majordodo.client.http.Client;
import majordodo.client.http.ClientConfiguration;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZooKeeper;

/**
 * Submits tasks in a loop with the original Majordodo Java client, finding the leader through
 * its ZooKeeper discovery ({@link ZookeeperDiscoveryService}: the {@code client.api.url} of the
 * {@code <zk path>/leader} znode), while the test kills the leader.
 *
 * <p>Every submission is a new task whose data names it ({@code <prefix>-<n>-try-<k>}: task
 * {@code n}, try {@code k}). The client itself retries what the broker refused without doing it
 * ({@code broker_not_leader}, {@code recovery_in_progress}, {@code broker_not_started}); what it
 * does not retry (a connection refused by a dead leader, no leader in ZooKeeper yet, retries used
 * up) ends the try with a {@link ClientException}, and the next try of the same task is a new
 * task with new data, so a try whose answer was lost can never be mistaken for another.
 *
 * <p>Prints one JSON object per line on stdout: {@code submitted} (n, try, data, taskId) for each
 * task id received, {@code failed} (n, try, data, error) for each try that raised, then
 * {@code done}. Exits 0 once every task got an id, 1 when the time limit passed first, 2 on a
 * wrong command line.
 *
 * <p>Arguments: zkConnect zkPath user password prefix count pauseMs maxSeconds.
 */
public final class JavaClientFailover {

    /** Retries of a refused request inside the Java client (its default is 20). */
    static final int BROKER_NOT_AVAILABLE_RETRIES = 20;

    /**
     * The Java client's pause before retry i is this times i: 20 retries wait up to
     * 250 ms x (1 + ... + 20) = 52.5 s in all, far more than a takeover (a ZooKeeper session
     * timeout of a few seconds, then the new leader's recovery) takes.
     */
    static final int BROKER_NOT_AVAILABLE_RETRY_INTERVAL_MS = 250;

    /** Pause after a try that raised, before the next try of the same task. */
    static final long PAUSE_AFTER_FAILURE_MS = 200;

    /** ZooKeeper session of the discovery: it only reads, its length matters little. */
    static final int ZK_SESSION_TIMEOUT_MS = 10_000;

    private JavaClientFailover() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 8) {
            System.err.println("usage: JavaClientFailover zkConnect zkPath user password prefix count pauseMs maxSeconds");
            System.exit(2);
        }
        String zkConnect = args[0];
        String zkPath = args[1];
        String user = args[2];
        String password = args[3];
        String prefix = args[4];
        int count = Integer.parseInt(args[5]);
        long pauseMs = Long.parseLong(args[6]);
        long deadline = System.currentTimeMillis() + Long.parseLong(args[7]) * 1000;

        CountDownLatch connected = new CountDownLatch(1);
        ZooKeeper zk = new ZooKeeper(zkConnect, ZK_SESSION_TIMEOUT_MS, event -> {
            if (event.getState() == Watcher.Event.KeeperState.SyncConnected) {
                connected.countDown();
            }
        });
        if (!connected.await(30, TimeUnit.SECONDS)) {
            System.err.println("no ZooKeeper session within 30 s at " + zkConnect);
            System.exit(1);
        }
        ClientConfiguration configuration = ClientConfiguration.defaultConfiguration()
                .setUsername(user)
                .setPassword(password)
                .setBrokerDiscoveryService(new ZookeeperDiscoveryService(zk).setZkPath(zkPath))
                .setBrokerNotAvailableRetries(BROKER_NOT_AVAILABLE_RETRIES)
                .setBrokerNotAvailableRetryInterval(BROKER_NOT_AVAILABLE_RETRY_INTERVAL_MS)
                .setConnectionTimeout(5_000)
                .setSotimeout(30_000);
        int failures = 0;
        boolean complete = true;
        try (Client client = new Client(configuration);
                ClientConnection con = client.openConnection()) {
            tasks:
            for (int n = 0; n < count; n++) {
                for (int attempt = 1; ; attempt++) {
                    if (System.currentTimeMillis() > deadline) {
                        complete = false;
                        break tasks;
                    }
                    String data = prefix + "-" + n + "-try-" + attempt;
                    SubmitTaskRequest task = new SubmitTaskRequest();
                    task.setTasktype("java-failover");
                    task.setUserid("java");
                    task.setData(data);
                    task.setMaxattempts(1);
                    try {
                        SubmitTaskResponse response = con.submitTask(task);
                        String id = response.getTaskId();
                        if (id == null || id.isEmpty() || "0".equals(id)) {
                            throw new IllegalStateException("no task id for " + data + ": " + response);
                        }
                        System.out.println("{\"event\":\"submitted\",\"n\":" + n + ",\"try\":" + attempt
                                + ",\"data\":" + quote(data) + ",\"taskId\":" + quote(id) + "}");
                        break;
                    } catch (ClientException e) {
                        failures++;
                        System.out.println("{\"event\":\"failed\",\"n\":" + n + ",\"try\":" + attempt
                                + ",\"data\":" + quote(data) + ",\"error\":" + quote(String.valueOf(e)) + "}");
                        Thread.sleep(PAUSE_AFTER_FAILURE_MS);
                    }
                }
                Thread.sleep(pauseMs);
            }
        } finally {
            zk.close();
        }
        System.out.println("{\"event\":\"done\",\"complete\":" + complete + ",\"failures\":" + failures + "}");
        System.exit(complete ? 0 : 1);
    }

    /** {@code s} as a JSON string. */
    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
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
        return out.append('"').toString();
    }
}
