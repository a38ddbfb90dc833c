use majordodo_testkit::certs::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

/// A TLS echo server on 127.0.0.1; each accepted connection's client certificate (if any) is
/// sent on the returned channel once the handshake completed.
async fn echo_server(
    tls: ServerTls,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Option<CertificateDer<'static>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (certs_tx, certs_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let mut stream = tls.accept(socket);
            let certs_tx = certs_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let mut first = true;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if first {
                        first = false;
                        let _ = certs_tx.send(stream.peer_certificate().cloned());
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, certs_rx)
}

async fn client(addr: std::net::SocketAddr, files: &ClientTlsFiles) -> io::Result<ClientStream> {
    let config = client_config(files).unwrap();
    connect(config, "localhost", TcpStream::connect(addr).await?).await
}

async fn echo(stream: &mut ClientStream, text: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(text).await?;
    stream.flush().await?;
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back).await?;
    Ok(back)
}

struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_file: PathBuf,
}

fn pki(name: &str) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(name);
    let ca_file = ca.write_cert(&dir.path().join("ca.pem"));
    Pki { dir, ca, ca_file }
}

fn server_files(pki: &Pki, client_ca: Option<PathBuf>) -> ServerTlsFiles {
    let (cert_file, key_file) =
        pki.ca
            .write_issued(pki.dir.path(), "server", &["localhost", "127.0.0.1"]);
    ServerTlsFiles {
        cert_file,
        key_file,
        client_ca_file: client_ca,
    }
}

#[tokio::test]
async fn client_certificate_is_verified_and_names_its_worker_ids() {
    let pki = pki("test ca");
    let tls = ServerTls::load("test", server_files(&pki, Some(pki.ca_file.clone()))).unwrap();
    assert!(tls.requires_client_cert());
    let (addr, mut certs) = echo_server(tls).await;
    let (cert_file, key_file) = pki.ca.write_issued(pki.dir.path(), "w1", &["w1"]);
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        cert_file: Some(cert_file),
        key_file: Some(key_file),
    };
    let mut stream = client(addr, &files).await.unwrap();
    assert_eq!(echo(&mut stream, b"hello").await.unwrap(), b"hello");
    let cert = certs.recv().await.unwrap();
    assert!(cert.is_some(), "the server sees the client's certificate");
    check_worker_identity(cert.as_ref(), "w1").unwrap();
    assert_eq!(
        check_worker_identity(cert.as_ref(), "w2"),
        Err(IdentityError::NotNamed {
            worker_id: "w2".into(),
            names: vec!["w1".into()]
        })
    );
    assert_eq!(
        check_worker_identity(None, "w1"),
        Err(IdentityError::NoCertificate)
    );
    assert!(matches!(
        check_worker_identity(cert.as_ref(), "not a name"),
        Err(IdentityError::NotADnsName(_))
    ));
}

#[tokio::test]
async fn wildcard_certificate_names_every_id_one_label_under_it() {
    let pki = pki("test ca");
    let issued = pki.ca.issue(&["*.pool.example"]);
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    check_worker_identity(Some(&cert), "w7.pool.example").unwrap();
    assert!(check_worker_identity(Some(&cert), "pool.example").is_err());
    assert!(check_worker_identity(Some(&cert), "a.b.pool.example").is_err());
}

#[tokio::test]
async fn client_certificate_of_another_ca_is_refused() {
    let pki = pki("test ca");
    let tls = ServerTls::load("test", server_files(&pki, Some(pki.ca_file.clone()))).unwrap();
    let (addr, _certs) = echo_server(tls).await;
    let other = TestCa::new("other ca");
    let (cert_file, key_file) = other.write_issued(pki.dir.path(), "intruder", &["w1"]);
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        cert_file: Some(cert_file),
        key_file: Some(key_file),
    };
    // TLS 1.3: the client finishes its side first; the server's refusal arrives on first use.
    let result = match client(addr, &files).await {
        Ok(mut stream) => echo(&mut stream, b"hello").await.map(|_| ()),
        Err(error) => Err(error),
    };
    let error = result.expect_err("a certificate of another CA must be refused");
    assert!(
        error.to_string().contains("UnknownCA") || error.to_string().contains("unknown"),
        "{error}"
    );
    // And without any client certificate.
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        ..ClientTlsFiles::default()
    };
    let result = match client(addr, &files).await {
        Ok(mut stream) => echo(&mut stream, b"hello").await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        result.is_err(),
        "a client without a certificate must be refused"
    );
}

#[tokio::test]
async fn untrusted_server_certificate_is_refused() {
    let pki = pki("test ca");
    let tls = ServerTls::load("test", server_files(&pki, None)).unwrap();
    let (addr, _certs) = echo_server(tls).await;
    let other = pki_other(&pki);
    let error = client(
        addr,
        &ClientTlsFiles {
            ca_file: Some(other),
            ..ClientTlsFiles::default()
        },
    )
    .await
    .err()
    .expect("a server certificate of an unknown CA must be refused");
    assert!(
        error
            .to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    // Trusting the right CA, the same server is accepted.
    let mut stream = client(
        addr,
        &ClientTlsFiles {
            ca_file: Some(pki.ca_file.clone()),
            ..ClientTlsFiles::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(echo(&mut stream, b"ok").await.unwrap(), b"ok");
}

fn pki_other(pki: &Pki) -> PathBuf {
    TestCa::new("other ca").write_cert(&pki.dir.path().join("other-ca.pem"))
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_keeps_established_connections() {
    let pki = pki("old ca");
    let files = server_files(&pki, None);
    let tls = ServerTls::load("test", files.clone()).unwrap();
    let (addr, _certs) = echo_server(tls.clone()).await;
    let trust_old = ClientTlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        ..ClientTlsFiles::default()
    };
    let mut established = client(addr, &trust_old).await.unwrap();
    assert_eq!(echo(&mut established, b"before").await.unwrap(), b"before");
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

    // Rotate to a certificate of a new CA.
    let new_ca = TestCa::new("new ca");
    let new_ca_file = new_ca.write_cert(&pki.dir.path().join("new-ca.pem"));
    let issued = new_ca.issue(&["localhost", "127.0.0.1"]);
    // Modification times can be equal within the filesystem's granularity: the length
    // differs too only by chance, so write a key of a different length if needed.
    std::fs::write(&files.cert_file, format!("{}\n", issued.cert_pem)).unwrap();
    std::fs::write(&files.key_file, format!("{}\n", issued.key_pem)).unwrap();
    assert!(tls.reload_if_changed().unwrap(), "the change is noticed");

    // The established connection goes on with its session.
    assert_eq!(echo(&mut established, b"after").await.unwrap(), b"after");
    // New handshakes get the new certificate.
    let trust_new = ClientTlsFiles {
        ca_file: Some(new_ca_file),
        ..ClientTlsFiles::default()
    };
    let mut fresh = client(addr, &trust_new).await.unwrap();
    assert_eq!(echo(&mut fresh, b"new").await.unwrap(), b"new");
    assert!(
        client(addr, &trust_old).await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test]
async fn a_broken_reload_keeps_the_certificate_in_use() {
    let pki = pki("ca");
    let files = server_files(&pki, None);
    let tls = ServerTls::load("test", files.clone()).unwrap();
    let (addr, _certs) = echo_server(tls.clone()).await;
    std::fs::write(&files.key_file, "not a key").unwrap();
    let error = tls.reload().unwrap_err();
    assert!(error.to_string().contains("server.key"), "{error}");
    let trust = ClientTlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        ..ClientTlsFiles::default()
    };
    let mut stream = client(addr, &trust).await.unwrap();
    assert_eq!(echo(&mut stream, b"still").await.unwrap(), b"still");
}

#[tokio::test]
async fn a_stalled_handshake_times_out() {
    tokio::time::pause();
    let pki = pki("ca");
    let tls = ServerTls::load("test", server_files(&pki, None)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let mut stream = tls.accept(socket);
    let mut buf = [0u8; 1];
    let error = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
}

#[test]
fn loopback_listen_addresses() {
    assert!(is_loopback_listen("127.0.0.1:7364"));
    assert!(is_loopback_listen("127.0.0.2:0"));
    assert!(is_loopback_listen("[::1]:7364"));
    assert!(is_loopback_listen("localhost:7364"));
    assert!(!is_loopback_listen("0.0.0.0:7364"));
    assert!(!is_loopback_listen("[::]:7364"));
    assert!(!is_loopback_listen("10.1.2.3:7364"));
    assert!(!is_loopback_listen("broker.example:7364"));
}

#[test]
fn missing_files_are_named() {
    let error = ServerTls::load(
        "test",
        ServerTlsFiles {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
            client_ca_file: None,
        },
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}
