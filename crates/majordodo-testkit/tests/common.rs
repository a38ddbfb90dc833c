//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

/// Whether process `pid` is gone: no `/proc` entry, or a zombie waiting for its reaper.
pub fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // the state is the first field after the parenthesised command name
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Whether something accepts TCP connections at `addr`.
pub async fn accepts_tcp(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

pub fn dir_exists(path: &Path) -> bool {
    path.exists()
}

/// The TCP sockets process `pid` listens on, read from `/proc` (Linux only).
pub fn listening_sockets(pid: u32) -> Vec<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy();
                    Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // fields: sl local rem state ... inode (index 9); state 0A = LISTEN
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(fields[9]) {
                continue;
            }
            let Some((ip_hex, port_hex)) = fields[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port_hex, 16).expect("hex port");
            // the kernel prints the address as 32-bit words in host (little-endian) order
            let words: Vec<u32> = (0..ip_hex.len() / 8)
                .map(|i| u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16).expect("hex address"))
                .collect();
            let ip = if words.len() == 1 {
                IpAddr::V4(Ipv4Addr::from(words[0].to_le_bytes()))
            } else {
                let mut bytes = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            };
            found.push(SocketAddr::new(ip, port));
        }
    }
    found
}

/// Whether `addr` is a loopback address (IPv4, IPv6, or IPv4-mapped IPv6).
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The session owning the ephemeral znode at `path`, `None` if it does not exist.
pub async fn registration_owner(zk: &str, path: &str) -> Option<i64> {
    let client = zookeeper_client::Client::connect(zk)
        .await
        .expect("connect to zookeeper");
    client
        .check_stat(path)
        .await
        .expect("stat registration")
        .map(|stat| stat.ephemeral_owner)
}
