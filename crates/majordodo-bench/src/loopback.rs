//! The machine's ceiling for small messages over loopback TCP: many connections, each with
//! one small frame in flight each way at a time, as a worker of one thread has with its
//! broker (an assignment one way, its finish report the other).
//!
//! The two ends run on two runtimes of two threads each, as the broker process and the
//! workers' process do, and do nothing but write and read: no framing, no state. A burn-down
//! on workers of one thread needs at least one such round trip per task, so this is the most
//! such a burn-down could reach on this machine, before any work of ours.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

use crate::report::{Table, group, per_sec};

/// Bytes of each message, about an assignment or report of a no-op task.
const MESSAGE: usize = 64;

/// Options of `loopback`.
#[derive(clap::Args, Debug)]
pub(crate) struct LoopbackArgs {
    /// Connections, each with one message in flight each way.
    #[arg(long, default_value_t = 1_000)]
    connections: usize,
    /// Seconds of round trips, once every connection is made.
    #[arg(long, default_value_t = 3)]
    secs: u64,
}

/// `majordodo-bench loopback`: prints the ceiling.
pub(crate) async fn run(args: &LoopbackArgs) -> anyhow::Result<()> {
    let window = Duration::from_secs(args.secs.max(1));
    let rate = measure(args.connections, window).await?;
    let mut t = Table::new(
        "loopback TCP: round trips of one 64-byte message each way, one in flight per connection",
        &["connections", "seconds", "round trips/s"],
    );
    t.row(vec![
        group(args.connections as u64),
        window.as_secs().to_string(),
        per_sec(rate),
    ]);
    t.print();
    Ok(())
}

/// Round trips per second over `connections` loopback connections during `window`, each
/// connection writing one message and reading its echo, over and over. Runs on runtimes of
/// its own, on a thread of its own.
pub(crate) async fn measure(connections: usize, window: Duration) -> anyhow::Result<f64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("loopback".into())
        .spawn(move || {
            let _ = tx.send(measure_here(connections, window));
        })
        .context("start the loopback probe's thread")?;
    rx.await.context("the loopback probe's thread ended")?
}

fn measure_here(connections: usize, window: Duration) -> anyhow::Result<f64> {
    anyhow::ensure!(connections > 0, "at least one connection");
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .context("start a runtime")
    };
    let server = runtime("loopback-server")?;
    let clients = runtime("loopback-client")?;
    let listener = server
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .context("listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    server.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(stream));
        }
    });
    let total = clients.block_on(async move {
        let start = Arc::new(Barrier::new(connections + 1));
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let stream = connect(addr).await?;
            tasks.push(tokio::spawn(ping(stream, start.clone(), window)));
        }
        start.wait().await;
        let mut total = 0u64;
        for task in tasks {
            total += task.await.context("a client task")??;
        }
        anyhow::Ok(total)
    })?;
    server.shutdown_timeout(Duration::from_secs(1));
    Ok(total as f64 / window.as_secs_f64())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .context("connect to the loopback server: timed out")?
        .context("connect to the loopback server")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends back every message until the client closes.
async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; MESSAGE];
    while stream.read_exact(&mut buf).await.is_ok() {
        if stream.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Once every connection is made, round trips until `window` has passed; returns how many.
async fn ping(mut stream: TcpStream, start: Arc<Barrier>, window: Duration) -> anyhow::Result<u64> {
    start.wait().await;
    let deadline = Instant::now() + window;
    let message = [7u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut trips = 0u64;
    while Instant::now() < deadline {
        stream
            .write_all(&message)
            .await
            .context("write to the loopback server")?;
        stream
            .read_exact(&mut back)
            .await
            .context("read the loopback echo")?;
        trips += 1;
    }
    Ok(trips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_are_counted_over_the_window() {
        // Goal: the probe really exchanges messages (a rate above zero over a short window),
        // and refuses zero connections.
        let rate = measure(4, Duration::from_millis(200)).await.unwrap();
        assert!(rate > 0.0, "{rate}");
        assert!(measure(0, Duration::from_millis(10)).await.is_err());
    }
}
