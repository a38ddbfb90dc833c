//! Denial-of-service battery of the HTTP API, against the real `majordodo broker` binary with a
//! real `majordodo worker`: header trickling (slowloris), 2 000 idle connections from one
//! address, a flood of 200 bad logins per second, and 64 concurrent maximal bodies. During each
//! attack a legitimate client submits a task and waits for it to finish; its latency is
//! printed (run with `--nocapture` to see it). Every attack is bounded in count and time.
//!
//! The scenarios run one at a time (they share the machine's cores and the broker's memory is
//! measured in one of them).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Longest any single request of the legitimate client may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker with a worker running `cat` tasks, and the admin's token.
struct Cluster {
    _dir: tempfile::TempDir,
    broker: Server,
    _worker: Server,
    addr: SocketAddr,
    token: String,
}

impl Cluster {
    /// Starts a broker with `http_extra` in its `[http]` table, and a worker.
    fn start(http_extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (broker, url, worker_port) = start_broker(d, http_extra);
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix("/majordodo"))
            .expect("an http URL")
            .parse()
            .expect("a socket address");
        let worker_toml = write_file(
            d,
            "worker.toml",
            &format!(
                "broker = \"{worker_port}\"\nshared_secret_file = \"worker.secret\"\n\
                 worker_id = \"w1\"\nmax_threads = 4\n\n[executors.cat]\n\
                 argv = [\"sh\", \"-c\", \"cat\"]\ntimeout_ms = 10000\n"
            ),
        );
        let mut worker = Server::start({
            let mut cmd = majordodo();
            cmd.current_dir(d)
                .args(["worker", "--config", &worker_toml]);
            cmd
        });
        worker.wait_line("capacity:");
        let token = std::fs::read_to_string(d.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let c = Cluster {
            _dir: dir,
            broker,
            _worker: worker,
            addr,
            token,
        };
        // The worker is connected once a first task finishes.
        c.submit_and_finish("warm-up");
        c
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Submits a `cat` task and waits until it finished; returns how long it took.
    fn submit_and_finish(&self, what: &str) -> Duration {
        let started = Instant::now();
        let body =
            json!({"action": "submitTask", "userid": "admin", "tasktype": "cat", "data": what});
        let (status, answer) = http(
            self.addr,
            "POST",
            "/majordodo",
            &self.bearer(),
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(status, 200, "{answer}");
        let id = answer["taskId"].as_u64().expect("a task id");
        assert!(id > 0, "{answer}");
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let (status, view) = http(
                self.addr,
                "GET",
                &format!("/majordodo?view=task&taskId={id}"),
                &self.bearer(),
                None,
            );
            assert_eq!(status, 200, "{view}");
            if view["task"]["status"] == "finished" {
                assert_eq!(view["task"]["result"], what);
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not finish: {view}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The broker's peak resident memory (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.broker.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`); the status and JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
    body: Option<&[u8]>,
) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the broker");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read the answer");
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Raises this process's open-file soft limit to its hard limit (the attacks hold thousands
/// of sockets) and returns the new soft limit.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Whether the server closed `s` within `within` (EOF or reset), reading and discarding.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn header_trickling_and_idle_keep_alive_connections_are_closed_at_their_timeouts() {
    // Goal: slowloris. Clients that send one header line every 2 s never finish a request head;
    // each is closed when header_read_timeout (4 s) runs out, not later, while a legitimate
    // client's submit→finish keeps working. An idle keep-alive connection is closed after
    // keep_alive_timeout (6 s), not at the shorter header timeout.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start("header_read_timeout = \"4s\"\nkeep_alive_timeout = \"6s\"\n");
    const TRICKLERS: usize = 50;
    let started = Instant::now();
    let tricklers: Vec<_> = (0..TRICKLERS)
        .map(|i| {
            let addr = c.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /majordodo?view=status HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                // At most 10 lines (20 s): the timeout must end it long before.
                for line in 0..10 {
                    if closed_within(&mut s, Duration::from_secs(2)) {
                        return Some(started.elapsed());
                    }
                    if s.write_all(format!("X-Trickle-{i}-{line}: a\r\n").as_bytes())
                        .is_err()
                    {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    let legit = c.submit_and_finish("during slowloris");
    println!("slowloris: legitimate submit→finish took {legit:?}");
    for t in tricklers {
        let closed = t
            .join()
            .unwrap()
            .expect("a trickling connection is closed by the header-read timeout");
        assert!(
            closed >= Duration::from_millis(3_500) && closed < Duration::from_secs(8),
            "closed after {closed:?}; the header-read timeout is 4 s"
        );
    }

    // Keep-alive: one request, then silence.
    let mut s = TcpStream::connect(c.addr).unwrap();
    let head = format!(
        "GET /majordodo?view=status HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        c.bearer()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle = Instant::now();
    assert!(
        !closed_within(&mut s, Duration::from_secs(5)),
        "an idle keep-alive connection was closed before keep_alive_timeout"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(4)),
        "an idle keep-alive connection stayed open past keep_alive_timeout"
    );
    println!(
        "keep-alive: idle connection closed after {:?}",
        idle.elapsed()
    );
}

#[test]
fn two_thousand_idle_connections_from_one_address_do_not_keep_another_client_out() {
    // Goal: one address opening 2 000 connections and sending nothing holds at most
    // max_connections_per_address of them (the rest are closed at once), so a client from
    // another address is served at once, long before any header-read timeout (30 s here)
    // would free the attacker's connections.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limit = raise_fd_limit();
    assert!(
        limit >= 2_500,
        "open-file limit {limit} is too low for this test"
    );
    let c = Cluster::start(
        "header_read_timeout = \"30s\"\nmax_connections = 512\nmax_connections_per_address = 64\n",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = c.addr;
    // The attacker connects from 127.0.0.2 (all of 127/8 is loopback).
    let (mut sockets, refused) = rt.block_on(async move {
        let mut sockets = Vec::new();
        let mut refused = 0;
        for _ in 0..2_000 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            match tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await {
                Ok(Ok(s)) => sockets.push(s),
                _ => refused += 1,
            }
        }
        (sockets, refused)
    });
    println!(
        "idle: {} attacker connections opened, {refused} not",
        sockets.len()
    );
    let legit = c.submit_and_finish("during 2000 idle connections");
    println!("idle: legitimate submit→finish took {legit:?}");
    assert!(
        legit < Duration::from_secs(10),
        "a client from another address waited {legit:?} behind idle connections"
    );
    // The broker closed all but max_connections_per_address of the attacker's connections.
    let open = rt.block_on(async {
        let mut open = 0;
        for s in &mut sockets {
            let mut buf = [0u8; 16];
            // Still open when nothing arrives (an EOF or a reset: closed by the broker).
            let read = tokio::time::timeout(
                Duration::from_millis(5),
                tokio::io::AsyncReadExt::read(s, &mut buf),
            )
            .await;
            if read.is_err() {
                open += 1;
            }
        }
        open
    });
    println!("idle: {open} attacker connections still open");
    assert!(
        open <= 64,
        "{open} idle connections from one address are held"
    );
    drop(sockets);
}

#[test]
fn two_hundred_bad_logins_per_second_do_not_slow_valid_tokens() {
    // Goal: while 200 wrong Basic passwords per second arrive (each costing a 600 000-iteration
    // PBKDF2 if checked; the lock-out is set out of reach so the hashing pool takes the whole
    // flood), a valid bearer token is still answered quickly (it never waits for a hash nor
    // for a request slot held by a login) and a legitimate submit→finish works.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        raise_fd_limit() >= 2_500,
        "the open-file limit is too low for this test"
    );
    let hash = majordodo_broker::http::auth::hash_password("carol's real password");
    let c = Cluster::start(&format!(
        "auth_failure_limit = 1000000\nmax_connections = 4096\nmax_connections_per_address = 4096\n\
         [[http.users]]\nname = \"carol\"\nrole = \"user\"\npassword_hash = \"{hash}\"\n"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    // 200 per second for 6 s at most, from 20 threads (10 per second each). Each login is sent
    // on its own connection without waiting for its answer (as an attacker would); the
    // answers are collected at the end (0: none yet).
    let flood: Vec<_> = (0..20)
        .map(|t| {
            let (stop, sent, statuses, addr) = (stop.clone(), sent.clone(), statuses.clone(), c.addr);
            std::thread::spawn(move || {
                let bad = format!(
                    "Basic {}",
                    base64_encode(format!("carol:guess-{t}").as_bytes())
                );
                let head = format!(
                    "GET /majordodo?view=status HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\nConnection: close\r\n\r\n"
                );
                let start = Instant::now();
                let mut open = Vec::new();
                for i in 0..60u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = start + Duration::from_millis(100) * i;
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                        continue;
                    };
                    if s.write_all(head.as_bytes()).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                        open.push(s);
                    }
                }
                for mut s in open {
                    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                    let mut answer = Vec::new();
                    let _ = s.read_to_end(&mut answer);
                    let status = if answer.is_empty() { 0 } else { parse_answer(&answer).0 };
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        let (status, b) = http(c.addr, "GET", "/majordodo?view=status", &c.bearer(), None);
        latencies.push(t.elapsed());
        assert_eq!(status, 200, "{b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let legit = c.submit_and_finish("during a bad-login flood");
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.join().unwrap();
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p90 = latencies[latencies.len() * 9 / 10];
    let max = latencies[latencies.len() - 1];
    println!(
        "bad logins: {} sent ({:?} by status); valid token p50 {p50:?} p90 {p90:?} max {max:?}; \
         legitimate submit→finish took {legit:?}",
        sent.load(Ordering::Relaxed),
        statuses.lock().unwrap()
    );
    assert!(
        !statuses.lock().unwrap().contains_key(&200),
        "a wrong password was accepted"
    );
    // Logins beyond the hashing queue (64) were answered at once, not left waiting.
    let unanswered = statuses.lock().unwrap().get(&0).copied().unwrap_or(0);
    assert!(
        unanswered <= 100,
        "{unanswered} bad logins were still waiting at the end of the flood"
    );
    // The issue's bound is 50 ms; a debug build on a shared machine gets twenty times that.
    assert!(
        max < Duration::from_secs(1),
        "a valid token waited {max:?} during the flood"
    );
}

#[test]
fn bad_logins_from_one_address_are_locked_out() {
    // Goal: past auth_failure_limit wrong passwords from one address, its password logins are
    // answered 429 with Retry-After without being checked, a token from the same address still
    // works, and a password login from another address is still checked.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hash = majordodo_broker::http::auth::hash_password_with(
        "dave's password",
        1_000,
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9),
    );
    let c = Cluster::start(&format!(
        "auth_failure_limit = 5\nauth_lockout = \"30s\"\n\
         [[http.users]]\nname = \"dave\"\nrole = \"user\"\npassword_hash = \"{hash}\"\n\
         [[http.users]]\nname = \"erin\"\nrole = \"user\"\npassword_hash = \"{hash}\"\n"
    ));
    let basic = |user: &str, pw: &str| {
        format!("Basic {}", base64_encode(format!("{user}:{pw}").as_bytes()))
    };
    for i in 0..5 {
        let (s, _) = http(
            c.addr,
            "GET",
            "/majordodo?view=status",
            &basic("nobody", &format!("x{i}")),
            None,
        );
        assert_eq!(s, 401);
    }
    let (s, b) = http(
        c.addr,
        "GET",
        "/majordodo?view=status",
        &basic("erin", "dave's password"),
        None,
    );
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["field"], "authorization");
    let (s, _) = http(c.addr, "GET", "/majordodo?view=status", &c.bearer(), None);
    assert_eq!(s, 200);
    // Another address is not locked out.
    let socket = socket_from("127.0.0.3", c.addr);
    let (s, b) = request_on(
        socket,
        "/majordodo?view=status",
        &basic("erin", "dave's password"),
    );
    assert_eq!(s, 200, "{b}");
}

#[test]
fn sixty_four_maximal_bodies_keep_the_broker_memory_bounded() {
    // Goal: 64 concurrent requests with 16 MiB bodies (the default max_body_size) shaped to
    // expand (millions of tiny values) raise the broker's peak RSS by far less than the bodies
    // themselves (1 GiB): bodies are buffered within max_buffered_body_size (256 MiB) and
    // never expanded into JSON values. A legitimate submit→finish keeps working.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_fd_limit();
    let c = Cluster::start("");
    let before = c.peak_rss_kib();
    let max = 16 * 1024 * 1024;
    let mut body = br#"{"action":"submitTasks","tasks":["#.to_vec();
    while body.len() + 4 < max {
        body.extend_from_slice(b"[],");
    }
    body.extend_from_slice(b"[]]}");
    assert!(body.len() <= max);
    let body = Arc::new(body);
    let head = format!(
        "POST /majordodo HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        c.addr,
        c.bearer(),
        body.len()
    );
    let started = Instant::now();
    let senders: Vec<_> = (0..64)
        .map(|_| {
            let (body, head, addr) = (body.clone(), head.clone(), c.addr);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(head.as_bytes()).unwrap();
                if s.write_all(&body).is_err() {
                    return 0; // refused before the whole body was read
                }
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                parse_answer(&answer).0
            })
        })
        .collect();
    let legit = c.submit_and_finish("during 64 maximal bodies");
    let statuses: Vec<u16> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let after = c.peak_rss_kib();
    println!(
        "maximal bodies: answered {:?} in {:?}; broker peak RSS {} MiB before, {} MiB after; \
         legitimate submit→finish took {legit:?}",
        statuses
            .iter()
            .fold(std::collections::BTreeMap::<u16, u32>::new(), |mut m, s| {
                *m.entry(*s).or_default() += 1;
                m
            }),
        started.elapsed(),
        before / 1024,
        after / 1024
    );
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 503 || *s == 0),
        "{statuses:?}"
    );
    let grown_mib = (after.saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 512,
        "the broker's peak RSS grew by {grown_mib} MiB under 64 bodies of 16 MiB"
    );
}

fn socket_from(local: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s
}

fn request_on(mut s: TcpStream, path: &str, auth: &str) -> (u16, Value) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    parse_answer(&answer)
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
