package rs.majordodo.interop;

import java.util.ArrayList;
import java.util.List;

import majordodo.client.BrokerAddress;
import majordodo.client.BrokerStatus;
import majordodo.client.ClientConnection;
import majordodo.client.ClientException;
import majordodo.client.SubmitTaskRequest;
import majordodo.client.SubmitTaskResponse;
import majordodo.client.TaskStatus;
import majordodo.client.discovery.StaticBrokerDiscoveryService;
import majordodo.client.http.Client;
import majordodo.client.http.ClientConfiguration;

/**
 * Submits tasks (one by one and in a batch) with the original Majordodo Java client and reads
 * them back, checking every answer. Prints one line per step and exits with status 0 when every
 * check passed, 1 (with the failed check on stderr) otherwise.
 *
 * <p>Arguments: host port user password. The broker must hold no task when this starts.
 */
public final class JavaClientInterop {

    private JavaClientInterop() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: JavaClientInterop host port user password");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        try {
            run(host, port, args[2], args[3]);
        } catch (CheckFailed e) {
            System.err.println("CHECK FAILED: " + e.getMessage());
            System.exit(1);
        }
        System.out.println("INTEROP OK");
    }

    private static ClientConfiguration configuration(String host, int port, String user, String password) {
        return ClientConfiguration.defaultConfiguration()
                .setUsername(user)
                .setPassword(password)
                .setBrokerDiscoveryService(new StaticBrokerDiscoveryService(BrokerAddress.http(host, port)))
                .setBrokerNotAvailableRetries(1)
                .setBrokerNotAvailableRetryInterval(10)
                .setConnectionTimeout(10_000)
                .setSotimeout(30_000);
    }

    private static void run(String host, int port, String user, String password) throws Exception {
        long before = System.currentTimeMillis();
        try (Client client = new Client(configuration(host, port, user, password));
                ClientConnection con = client.openConnection()) {
            SubmitTaskRequest single = task("java-type", "java-user", "hello from java");
            single.setMaxattempts(2);
            single.setSlot("java-slot");
            single.setTimeToLive(3_600_000);
            SubmitTaskResponse created = con.submitTask(single);
            check(created.getTaskId() != null, "single submit created a task: " + created);
            check("".equals(created.getOutcome()), "no outcome for a created task: " + created);
            System.out.println("submitTask -> " + created.getTaskId());

            SubmitTaskResponse busy = con.submitTask(single);
            check(busy.getTaskId() == null, "busy slot creates no task: " + busy);
            check("slot java-slot already assigned".equals(busy.getOutcome()),
                    "busy slot outcome is read by the Java client: " + busy);
            System.out.println("submitTask on a busy slot -> " + busy.getOutcome());

            List<SubmitTaskRequest> batch = new ArrayList<>();
            for (int i = 0; i < 3; i++) {
                SubmitTaskRequest t = task("java-batch", "java-user", "batch " + i);
                t.setMaxattempts(0);
                batch.add(t);
            }
            SubmitTaskRequest pooled = task("java-batch", "java-user", "pooled");
            pooled.setCodePoolId("pool-1");
            pooled.setMode(SubmitTaskRequest.MODE_OBJECT);
            batch.add(pooled);
            List<SubmitTaskResponse> results = con.submitTasks(batch);
            check(results.size() == 4, "one result per batch task: " + results);
            for (SubmitTaskResponse r : results) {
                check(r.getTaskId() != null, "batch task created: " + r);
            }
            System.out.println("submitTasks -> " + results.size() + " tasks");

            TaskStatus t = con.getTaskStatus(created.getTaskId());
            check(t != null, "task " + created.getTaskId() + " is found");
            check(created.getTaskId().equals(t.getTaskId()), "task id: " + t.getTaskId());
            check("java-user".equals(t.getUserId()), "user: " + t.getUserId());
            check("java-type".equals(t.getTasktype()), "type: " + t.getTasktype());
            check("hello from java".equals(t.getData()), "data: " + t.getData());
            check("waiting".equals(t.getStatus()), "status: " + t.getStatus());
            check(t.getMaxattempts() == 2, "maxattempts: " + t.getMaxattempts());
            check(t.getAttempts() == 0, "attempts: " + t.getAttempts());
            check("java-slot".equals(t.getSlot()), "slot: " + t.getSlot());
            check(t.getDeadline() >= before + 3_600_000, "deadline from timeToLive: " + t.getDeadline());
            check(t.getCreatedTimestamp() >= before - 60_000, "created: " + t.getCreatedTimestamp());
            check("factory".equals(t.getMode()), "default mode: " + t.getMode());
            System.out.println("getTaskStatus -> " + t.getStatus() + " " + t.getData());

            TaskStatus p = con.getTaskStatus(results.get(3).getTaskId());
            check("pool-1".equals(p.getCodePoolId()), "per-task codePoolId: " + p.getCodePoolId());
            check(SubmitTaskRequest.MODE_OBJECT.equals(p.getMode()), "per-task mode: " + p.getMode());
            check(p.getMaxattempts() == 1, "pooled maxattempts: " + p.getMaxattempts());
            TaskStatus unlimited = con.getTaskStatus(results.get(0).getTaskId());
            check(unlimited.getMaxattempts() == 0, "maxattempts 0 (unlimited): " + unlimited.getMaxattempts());
            check("batch 0".equals(unlimited.getData()), "batch data in order: " + unlimited.getData());

            check(con.getTaskStatus("999999999") == null, "an unknown task reads as null");

            BrokerStatus status = con.getBrokerStatus();
            check("LEADER".equals(status.getStatus()), "status: " + status.getStatus());
            check(status.getTasks() == 5, "tasks: " + status.getTasks());
            check(status.getWaitingtasks() == 5, "waiting: " + status.getWaitingtasks());
            check(status.getRunningtasks() == 0 && status.getErrortasks() == 0
                    && status.getFinishedtasks() == 0, "no other status: " + status);
            check(status.getCurrentSequenceNumber() != null, "sequence number present");
            System.out.println("getBrokerStatus -> " + status.getTasks() + " tasks");
        }

        try (Client client = new Client(configuration(host, port, user, password + "-wrong"));
                ClientConnection con = client.openConnection()) {
            con.getBrokerStatus();
            throw new CheckFailed("a wrong password must be refused");
        } catch (ClientException expected) {
            System.out.println("wrong password -> refused");
        }
    }

    private static SubmitTaskRequest task(String type, String user, String data) {
        SubmitTaskRequest t = new SubmitTaskRequest();
        t.setTasktype(type);
        t.setUserid(user);
        t.setData(data);
        t.setMaxattempts(1);
        return t;
    }

    private static void check(boolean ok, String what) throws CheckFailed {
        if (!ok) {
            throw new CheckFailed(what);
        }
    }

    private static final class CheckFailed extends Exception {
        private static final long serialVersionUID = 1L;

        CheckFailed(String message) {
            super(message);
        }
    }
}
