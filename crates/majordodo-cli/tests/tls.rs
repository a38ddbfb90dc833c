//! TLS on both ports of `majordodo broker`, with certificates made in the test: the whole flow
//! (submit → the worker runs it → finished) over HTTPS and a TLS worker port with client
//! certificates, workers whose certificates are refused, a certificate reload on SIGHUP that
//! keeps the live worker connection, and plain TCP refused off loopback.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use majordodo_testkit::certs::TestCa;

/// The broker's file: both ports on 127.0.0.1 with TLS, workers' client certificates issued by
/// `worker_ca`.
fn broker_toml(d: &Path, user_entry: &str, worker_ca: &str) -> String {
    write_file(
        d,
        "broker.toml",
        &format!(
            r#"data_dir = "data"

[http]
listen = "127.0.0.1:0"
tls_cert_file = "broker.crt"
tls_key_file = "broker.key"

{user_entry}
[workers]
listen = "127.0.0.1:0"
auth = "credentials-or-shared-secret"
shared_secret_file = "worker.secret"
tls_cert_file = "broker.crt"
tls_key_file = "broker.key"
tls_client_ca_file = "{worker_ca}"
keepalive_interval = "1s"
max_idle_time = "5s"
"#
        ),
    )
}

/// A broker with TLS on both ports, its certificate issued by `ca` for 127.0.0.1 and
/// localhost; returns it, its API URL and its worker port.
fn start_tls_broker(d: &Path, ca: &TestCa) -> (Server, String, String) {
    write_file(d, "worker.secret", "a-shared-secret-for-tests\n");
    ca.write_issued(d, "broker", &["127.0.0.1", "localhost"]);
    ca.write_cert(&d.join("ca.pem"));
    let user_entry = ok(&run_in(d, &["auth", "new-token", "--out", "admin.token"]));
    let config = broker_toml(d, &user_entry, "ca.pem");
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d).args(["broker", "--config", &config]);
        cmd
    });
    let url = broker.value_of("HTTP API:");
    let worker_port = broker.value_of("worker port:");
    (broker, url, worker_port)
}

/// A `majordodo worker` whose stderr goes to `log`, so a test can wait for what it logs.
fn spawn_worker(d: &Path, log: &Path, args: &[&str]) -> Child {
    let mut cmd = majordodo();
    cmd.current_dir(d)
        .arg("worker")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd.spawn().unwrap()
}

/// Waits (bounded) until the file at `log` contains `needle`; returns its text.
fn wait_log(log: &Path, needle: &str) -> String {
    poll(
        Duration::from_secs(20),
        &format!("{needle:?} in the log"),
        || {
            let text = std::fs::read_to_string(log).ok()?;
            text.contains(needle).then_some(text)
        },
    )
}

/// Waits (bounded) for `child` to exit; its status code.
fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    signal(child.id(), "TERM");
    wait_exit(child);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn whole_flow_over_tls_and_a_certificate_reload_keeps_the_worker_connected() {
    // Goal: submit → the worker runs it → finished, with TLS on both ports (the worker
    // authenticated by a client certificate naming its id, the CLI verifying the broker with
    // --ca-file); the CLI refuses the broker without the right CA; a new certificate loaded on
    // SIGHUP is used by new handshakes while the worker's established connection goes on.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("majordodo test ca");
    let (mut broker, url, worker_port) = start_tls_broker(d, &ca);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let (cert, key) = ca.write_issued(d, "w1", &["w1"]);
    let worker_log = d.join("worker.log");
    let mut worker = spawn_worker(
        d,
        &worker_log,
        &[
            "--broker",
            &worker_port,
            "--shared-secret-file",
            "worker.secret",
            "--worker-id",
            "w1",
            "--ca-file",
            "ca.pem",
            "--tls-cert-file",
            path(&cert),
            "--tls-key-file",
            path(&key),
            "--builtin",
            "echo",
        ],
    );

    let client = [
        "--url",
        url.as_str(),
        "--token-file",
        "admin.token",
        "--ca-file",
        "ca.pem",
    ];
    let mut submit = vec!["submit", "--type", "echo", "--data", "over tls"];
    submit.extend_from_slice(&client);
    assert_eq!(ok(&run_in(d, &submit)).trim(), "submitted task 1");
    let task = wait_task_status(d, &client, 1, "finished");
    assert_eq!(task["result"], "over tls");
    assert_eq!(task["workerId"], "w1");

    // Without --ca-file, the system's roots do not know the test CA: refused, saying why.
    let out = run_in(
        d,
        &[
            "status",
            "--url",
            &url,
            "--token-file",
            "admin.token",
            "--retry-for",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("certificate is not trusted") && stderr(&out).contains("--ca-file"),
        "{}",
        stderr(&out)
    );

    // Rotate the broker's certificate to one of a new CA, and reload on SIGHUP.
    let new_ca = TestCa::new("majordodo rotated ca");
    new_ca.write_cert(&d.join("new-ca.pem"));
    new_ca.write_issued(d, "broker", &["127.0.0.1", "localhost"]);
    signal(broker.pid(), "HUP");
    let new_client = [
        "--url",
        url.as_str(),
        "--token-file",
        "admin.token",
        "--ca-file",
        "new-ca.pem",
    ];
    poll(
        Duration::from_secs(15),
        "the new certificate served",
        || {
            let mut args = vec!["status", "--retry-for", "0"];
            args.extend_from_slice(&new_client);
            run_in(d, &args).status.success().then_some(())
        },
    );
    let mut args = vec!["status", "--retry-for", "0"];
    args.extend_from_slice(&client);
    let out = run_in(d, &args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the old certificate is no longer served"
    );

    // The worker trusts only the old CA: it could not connect again, so a task it finishes now
    // went over the connection established before the reload.
    let mut submit = vec!["submit", "--type", "echo", "--data", "after reload"];
    submit.extend_from_slice(&new_client);
    assert_eq!(ok(&run_in(d, &submit)).trim(), "submitted task 2");
    let task = wait_task_status(d, &new_client, 2, "finished");
    assert_eq!(task["result"], "after reload");
    let log = std::fs::read_to_string(&worker_log).unwrap();
    assert!(
        !log.contains("tls handshake with"),
        "the worker must not have reconnected: {log}"
    );

    stop(&mut worker);
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn workers_with_untrusted_or_mismatched_certificates_are_refused() {
    // Goal: with workers.tls_client_ca_file, a worker is refused when its certificate is issued
    // by another CA, when it has none, and when its certificate names another worker id; and a
    // worker that does not trust the broker's certificate does not connect.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("majordodo test ca");
    let (mut broker, url, worker_port) = start_tls_broker(d, &ca);
    let client = [
        "--url",
        url.as_str(),
        "--token-file",
        "admin.token",
        "--ca-file",
        "ca.pem",
    ];
    let base = [
        "--broker",
        worker_port.as_str(),
        "--shared-secret-file",
        "worker.secret",
        "--worker-id",
        "w1",
        "--builtin",
        "echo",
    ];

    // A certificate naming w1, issued by a CA the broker does not trust.
    let intruder_ca = TestCa::new("intruder ca");
    let (cert, key) = intruder_ca.write_issued(d, "intruder", &["w1"]);
    let log = d.join("intruder.log");
    let mut args = base.to_vec();
    args.extend([
        "--ca-file",
        "ca.pem",
        "--tls-cert-file",
        path(&cert),
        "--tls-key-file",
        path(&key),
    ]);
    let mut intruder = spawn_worker(d, &log, &args);
    wait_log(&log, "UnknownCA");
    stop(&mut intruder);

    // No client certificate at all.
    let log = d.join("nocert.log");
    let mut args = base.to_vec();
    args.extend(["--ca-file", "ca.pem"]);
    let mut nocert = spawn_worker(d, &log, &args);
    wait_log(&log, "CertificateRequired");
    stop(&mut nocert);

    // A trusted certificate naming w2, used to claim w1: the broker rejects it for good.
    let (cert, key) = ca.write_issued(d, "w2", &["w2"]);
    let log = d.join("w2.log");
    let mut args = base.to_vec();
    args.extend([
        "--ca-file",
        "ca.pem",
        "--tls-cert-file",
        path(&cert),
        "--tls-key-file",
        path(&key),
    ]);
    let mut impostor = spawn_worker(d, &log, &args);
    assert_eq!(wait_exit(&mut impostor), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("client certificate refused") && text.contains("not worker id"),
        "{text}"
    );

    // A worker that trusts another CA refuses the broker.
    let (cert, key) = ca.write_issued(d, "w1", &["w1"]);
    let other = intruder_ca.write_cert(&d.join("intruder-ca.pem"));
    let log = d.join("distrust.log");
    let mut args = base.to_vec();
    args.extend([
        "--ca-file",
        path(&other),
        "--tls-cert-file",
        path(&cert),
        "--tls-key-file",
        path(&key),
    ]);
    let mut distrusting = spawn_worker(d, &log, &args);
    wait_log(&log, "invalid peer certificate: UnknownIssuer");
    stop(&mut distrusting);

    // None of them got in.
    let mut args = vec!["workers", "--json"];
    args.extend_from_slice(&client);
    let workers = ok(&run_in(d, &args));
    assert!(!workers.contains("\"w1\""), "{workers}");
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn plain_tcp_off_loopback_is_refused_unless_allowed() {
    // Goal: a broker listening on a non-loopback address without TLS does not start: the error
    // names the key and the two ways out; allow_plaintext = true lets it go on to listen.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "worker.secret", "a-shared-secret-for-tests\n");
    let entry = ok(&run_in(d, &["auth", "new-token", "--out", "admin.token"]));
    for (http, workers, key) in [
        ("0.0.0.0:0", "127.0.0.1:0", "http.listen"),
        ("127.0.0.1:0", "0.0.0.0:0", "workers.listen"),
    ] {
        let config = write_file(
            d,
            "broker.toml",
            &format!(
                "data_dir = \"data\"\n[http]\nlisten = \"{http}\"\n{entry}\n[workers]\nlisten = \"{workers}\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n"
            ),
        );
        let out = run_in(d, &["broker", "--config", &config]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let table = key.split('.').next().unwrap();
        let text = stderr(&out);
        assert!(
            text.contains(key)
                && text.contains("not a loopback address")
                && text.contains(&format!("{table}.allow_plaintext = true"))
                && text.contains(&format!("{table}.tls_cert_file")),
            "{text}"
        );
    }
    // The flag moves the address too, and is checked the same way.
    let config = write_file(
        d,
        "broker.toml",
        &format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\nallow_plaintext = true\n{entry}\n[workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n"
        ),
    );
    let out = run_in(
        d,
        &[
            "broker",
            "--config",
            &config,
            "--worker-listen",
            "0.0.0.0:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("workers.listen"), "{}", stderr(&out));

    // With allow_plaintext on both tables the checks pass and the broker goes on to bind. A
    // test listens on loopback only, so the port it is given is held on 127.0.0.1 already: the
    // broker gets past the configuration and stops at the bind, naming the address in use.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let config = write_file(
        d,
        "broker.toml",
        &format!(
            "data_dir = \"data\"\n[http]\nlisten = \"0.0.0.0:{port}\"\nallow_plaintext = true\n{entry}\n[workers]\nlisten = \"0.0.0.0:{port}\"\nallow_plaintext = true\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n"
        ),
    );
    let out = run_in(d, &["broker", "--config", &config]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("0.0.0.0:{port}: the address is in use"))
            && !text.contains("not a loopback address"),
        "{text}"
    );
    drop(held);
}

#[test]
fn tls_settings_errors_name_the_key() {
    // Goal: a certificate without its key, a missing file and a client CA without TLS are
    // configuration errors (status 2) naming the key.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "worker.secret", "s\n");
    let entry = ok(&run_in(d, &["auth", "new-token", "--out", "admin.token"]));
    let ca = TestCa::new("ca");
    ca.write_issued(d, "broker", &["127.0.0.1"]);
    for (http, workers, key) in [
        ("tls_cert_file = \"broker.crt\"", "", "http.tls_key_file"),
        (
            "tls_cert_file = \"missing.crt\"\ntls_key_file = \"broker.key\"",
            "",
            "http.tls_cert_file",
        ),
        (
            "tls_cert_file = \"broker.crt\"\ntls_key_file = \"broker.crt\"",
            "",
            "http.tls_key_file",
        ),
        (
            "",
            "tls_client_ca_file = \"broker.crt\"",
            "workers.tls_client_ca_file",
        ),
    ] {
        let config = write_file(
            d,
            "broker.toml",
            &format!(
                "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n{http}\n{entry}\n[workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n{workers}\n"
            ),
        );
        let out = run_in(d, &["broker", "--config", &config]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
    }
}

#[test]
fn a_worker_whose_credential_is_revoked_is_cut_off_and_refused_over_tls() {
    // Goal: over TLS (client certificate naming the worker), a worker proving its own
    // credential runs tasks; `worker-credentials revoke` stops it at once with the reason, and
    // started again with the same file it is refused, saying the credential is revoked; a
    // --worker-id other than the credential's is refused before connecting.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("majordodo test ca");
    let (mut broker, url, worker_port) = start_tls_broker(d, &ca);
    let client = [
        "--url",
        url.as_str(),
        "--token-file",
        "admin.token",
        "--ca-file",
        "ca.pem",
    ];
    let mut args = vec![
        "worker-credentials",
        "add",
        "w1",
        "--output",
        "w1.credential",
    ];
    args.extend_from_slice(&client);
    let issued = ok(&run_in(d, &args));
    let id = issued
        .split_whitespace()
        .nth(2)
        .expect("issued credential <id> ...")
        .to_owned();
    assert!(id.starts_with("wc-"), "{issued}");
    // Issuing into an existing file is refused, and issues nothing.
    let out = run_in(d, &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    let (cert, key) = ca.write_issued(d, "w1", &["w1"]);
    let worker_args = [
        "--broker",
        worker_port.as_str(),
        "--credential-file",
        "w1.credential",
        "--ca-file",
        "ca.pem",
        "--tls-cert-file",
        path(&cert),
        "--tls-key-file",
        path(&key),
        "--builtin",
        "echo",
    ];
    let log = d.join("w1.log");
    let mut worker = spawn_worker(d, &log, &worker_args);
    let mut submit = vec!["submit", "--type", "echo", "--data", "with a credential"];
    submit.extend_from_slice(&client);
    assert_eq!(ok(&run_in(d, &submit)).trim(), "submitted task 1");
    let task = wait_task_status(d, &client, 1, "finished");
    assert_eq!(task["workerId"], "w1");

    let mut args = vec!["worker-credentials", "revoke", id.as_str()];
    args.extend_from_slice(&client);
    ok(&run_in(d, &args));
    assert_eq!(wait_exit(&mut worker), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("credential {id} is revoked")),
        "{text}"
    );

    let log = d.join("again.log");
    let mut again = spawn_worker(d, &log, &worker_args);
    assert_eq!(wait_exit(&mut again), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("credential {id} is revoked")),
        "{text}"
    );

    let mut args = vec!["worker-credentials", "list", "--json"];
    args.extend_from_slice(&client);
    let listed: serde_json::Value = serde_json::from_str(&ok(&run_in(d, &args))).unwrap();
    assert_eq!(listed[0]["credentialId"], id.as_str());
    assert_eq!(listed[0]["revoked"], true);
    assert!(!listed.to_string().contains("secret"), "{listed}");

    let mut args = worker_args.to_vec();
    args.extend(["--worker-id", "w2"]);
    let out = run_in(d, &[&["worker"][..], &args].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`worker_id`"), "{}", stderr(&out));

    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}
