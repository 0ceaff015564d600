//! TLS for client connections, as nats-server does it: INFO in plaintext then the
//! handshake (or the handshake first), client verification against a CA, mapping
//! client certificates to users, the handshake timeout, certificate reload, and the
//! configuration's errors. Certificates are made per test with rcgen.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use futures::StreamExt;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA and the files of certificates it signed, in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Pki {
    fn new() -> Pki {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("strait-tls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "strait test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `<name>.pem` and `<name>-key.pem`; returns their paths.
    fn issue(
        &self,
        name: &str,
        dn: &[(DnType, &str)],
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn server_cert(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        self.issue(
            name,
            &[(DnType::CommonName, cn)],
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client_cert(
        &self,
        name: &str,
        dn: &[(DnType, &str)],
        sans: Vec<SanType>,
    ) -> (PathBuf, PathBuf) {
        self.issue(name, dn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn client_config(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

/// A raw protocol connection over TLS, for byte-exact checks.
struct TlsRaw {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// INFO as received in plaintext before the handshake (none with handshake first).
    plain_info: Option<String>,
    buf: Vec<u8>,
}

fn read_plain_line(tcp: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

impl TlsRaw {
    fn connect(port: u16, config: Arc<rustls::ClientConfig>, handshake_first: bool) -> TlsRaw {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let plain_info = (!handshake_first).then(|| read_plain_line(&mut tcp));
        let conn =
            rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
                .unwrap();
        TlsRaw {
            stream: rustls::StreamOwned::new(conn, tcp),
            plain_info,
            buf: Vec::new(),
        }
    }

    fn handshake(&mut self) -> std::io::Result<()> {
        while self.stream.conn.is_handshaking() {
            self.stream.conn.complete_io(&mut self.stream.sock)?;
        }
        Ok(())
    }

    fn peer_cn(&self) -> String {
        let der = self.stream.conn.peer_certificates().unwrap()[0].to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        cn.as_str().unwrap().to_string()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn read_line(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return String::from_utf8_lossy(&line).into_owned();
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&self.buf).into_owned(),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Everything until the server closes (or 5 s pass); and whether it closed.
    fn read_until_close(&mut self) -> (String, bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (String::from_utf8_lossy(&self.buf).into_owned(), true),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
                Err(e) => {
                    let closed = e.kind() != std::io::ErrorKind::WouldBlock;
                    return (String::from_utf8_lossy(&self.buf).into_owned(), closed);
                }
            }
        }
    }
}

fn info_json(line: &str) -> serde_json::Value {
    assert!(line.starts_with("INFO {"), "{line}");
    serde_json::from_str(line[5..].trim()).unwrap()
}

async fn tls_client(
    server: &Server,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut opts = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.to_path_buf())
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    opts.connect(server.url()).await
}

async fn round_trip(client: &async_nats::Client) {
    let mut sub = client.subscribe("tls.test").await.unwrap();
    client.flush().await.unwrap();
    client.publish("tls.test", "hello".into()).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message in time")
        .expect("message");
    assert_eq!(msg.payload.as_ref(), b"hello");
}

#[tokio::test]
async fn tls_connect_publish_subscribe_and_info() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let server = Server::start(&["--tls", "--tlscert", p(&cert), "--tlskey", p(&key)]);
    assert!(server.wait_for_log(
        "TLS required for client connections",
        Duration::from_secs(5)
    ));

    // INFO comes in plaintext and asks for TLS.
    let mut raw = TlsRaw::connect(server.port, client_config(&pki.ca_path(), None), false);
    let info = info_json(raw.plain_info.as_deref().unwrap());
    assert_eq!(info["tls_required"], true);
    assert!(info.get("tls_verify").is_none() && info.get("tls_available").is_none());
    raw.handshake().unwrap();
    raw.send(
        b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB a 1\r\nPUB a 2\r\nhi\r\nPING\r\n",
    );
    assert_eq!(raw.read_line(), "MSG a 1 2\r\n");
    assert_eq!(raw.read_line(), "hi\r\n");
    assert_eq!(raw.read_line(), "PONG\r\n");

    let a = tls_client(&server, &pki.ca_path(), None).await.unwrap();
    let b = tls_client(&server, &pki.ca_path(), None).await.unwrap();
    round_trip(&a).await;
    // Across shards as well.
    let mut sub = a.subscribe("cross").await.unwrap();
    common::await_interest(&a, &b).await;
    let big = vec![b'x'; 200_000];
    b.publish("cross", big.clone().into()).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.payload.len(), big.len());
}

#[test]
fn plaintext_client_is_refused() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let server = Server::start(&["--tls", "--tlscert", p(&cert), "--tlskey", p(&key), "-D"]);
    let mut raw = common::Raw::connect(server.port);
    assert_eq!(info_json(&raw.info)["tls_required"], true);
    raw.send(b"CONNECT {\"verbose\":true}\r\nPING\r\n");
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert!(closed, "plaintext connection left open");
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert!(server.wait_for_log(
        "TLS handshake error: tls: first record does not look like a TLS handshake",
        Duration::from_secs(5)
    ));
}

#[test]
fn handshake_timeout() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 0.5\n}}\n",
        p(&cert),
        p(&key)
    );
    let server = Server::start_with_config(Some(&config), &["-D"]);
    let mut raw = common::Raw::connect(server.port);
    let start = Instant::now();
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    let elapsed = start.elapsed();
    assert_eq!(out, b"-ERR 'Secure Connection - TLS Required'\r\n");
    assert!(closed);
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(server.wait_for_log("TLS handshake timeout", Duration::from_secs(5)));
}

#[tokio::test]
async fn verify_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let good = pki.client_cert("client", &[(DnType::CommonName, "client")], vec![]);
    let other_ca = Pki::new();
    let stranger = other_ca.client_cert("stranger", &[(DnType::CommonName, "stranger")], vec![]);
    let server = Server::start(&[
        "--tlsverify",
        "--tlscert",
        p(&cert),
        "--tlskey",
        p(&key),
        "--tlscacert",
        p(&pki.ca_path()),
    ]);
    let raw = TlsRaw::connect(server.port, client_config(&pki.ca_path(), None), false);
    let info = info_json(raw.plain_info.as_deref().unwrap());
    assert_eq!(info["tls_required"], true);
    assert_eq!(info["tls_verify"], true);

    assert!(tls_client(&server, &pki.ca_path(), None).await.is_err());
    assert!(tls_client(&server, &pki.ca_path(), Some(&stranger))
        .await
        .is_err());
    let client = tls_client(&server, &pki.ca_path(), Some(&good))
        .await
        .unwrap();
    round_trip(&client).await;
    assert!(server.wait_for_log("TLS handshake error:", Duration::from_secs(5)));
}

#[tokio::test]
async fn verify_and_map_certificates_to_users() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let alice = pki.client_cert(
        "alice",
        &[(DnType::CommonName, "alice")],
        vec![SanType::Rfc822Name("alice@example.com".try_into().unwrap())],
    );
    let bob = pki.client_cert(
        "bob",
        &[
            (DnType::OrganizationName, "Strait Test"),
            (DnType::CommonName, "bob"),
        ],
        vec![],
    );
    let mallory = pki.client_cert("mallory", &[(DnType::CommonName, "mallory")], vec![]);
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify_and_map: true\n}}\n\
         accounts {{\n  A: {{ users = [ {{user: \"alice@example.com\", permissions: {{publish: {{deny: \"secret\"}}}}}} ] }}\n}}\n\
         authorization {{\n  users = [\n    {{user: \"CN=bob, O=Strait Test\"}}\n  ]\n}}\n",
        p(&cert),
        p(&key),
        p(&pki.ca_path())
    );
    let server = Server::start_with_config(Some(&config), &["-D"]);

    let a = tls_client(&server, &pki.ca_path(), Some(&alice))
        .await
        .unwrap();
    round_trip(&a).await;
    let b = tls_client(&server, &pki.ca_path(), Some(&bob))
        .await
        .unwrap();
    round_trip(&b).await;
    assert!(server.wait_for_log(
        "Using email found in cert for auth [\"alice@example.com\"]",
        Duration::from_secs(5)
    ));
    assert!(server.wait_for_log(
        "Using DistinguishedNameMatch for auth",
        Duration::from_secs(5)
    ));
    // The mapped user lands in its account, with its permissions.
    a.publish("secret", "x".into()).await.unwrap();
    a.flush().await.unwrap();
    assert!(server.wait_for_log(
        "\"A/user:alice@example.com\" - Publish Violation - Subject \"secret\"",
        Duration::from_secs(5)
    ));

    // A verified certificate that names no user is an authorization violation.
    let mut raw = TlsRaw::connect(
        server.port,
        client_config(&pki.ca_path(), Some(&mallory)),
        false,
    );
    let info = info_json(raw.plain_info.as_deref().unwrap());
    assert_eq!(info["auth_required"], true);
    assert_eq!(info["tls_verify"], true);
    raw.handshake().unwrap();
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    let (out, closed) = raw.read_until_close();
    assert_eq!(out, "-ERR 'Authorization Violation'\r\n");
    assert!(closed);
}

#[tokio::test]
async fn handshake_first() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  handshake_first: true\n}}\n",
        p(&cert),
        p(&key)
    );
    let server = Server::start_with_config(Some(&config), &[]);
    assert!(server.wait_for_log(
        "Clients that are not using \"TLS Handshake First\" option will fail to connect",
        Duration::from_secs(5)
    ));
    // Nothing comes in plaintext: the server waits for the client's handshake.
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tcp.read(&mut byte).is_err(),
        "INFO sent before the handshake"
    );
    drop(tcp);

    let mut raw = TlsRaw::connect(server.port, client_config(&pki.ca_path(), None), true);
    raw.handshake().unwrap();
    let info = info_json(&raw.read_line());
    assert_eq!(info["tls_required"], true);
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
    assert_eq!(raw.read_line(), "PONG\r\n");

    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_path())
        .tls_first()
        .connection_timeout(Duration::from_secs(5))
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client).await;
}

#[test]
fn reload_serves_the_new_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "first");
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
        p(&cert),
        p(&key)
    );
    let server = Server::start_with_config(Some(&config), &[]);
    let mut before = TlsRaw::connect(server.port, client_config(&pki.ca_path(), None), false);
    before.handshake().unwrap();
    assert_eq!(before.peer_cn(), "first");

    // Same paths, new contents.
    let (cert2, key2) = pki.server_cert("server-next", "second");
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    server.signal("reload");
    assert!(server.wait_for_log("Reloaded: tls = enabled", Duration::from_secs(5)));
    assert!(server.wait_for_log("Reloaded server configuration", Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut after = TlsRaw::connect(server.port, client_config(&pki.ca_path(), None), false);
        after.handshake().unwrap();
        if after.peer_cn() == "second" {
            break;
        }
        assert!(Instant::now() < deadline, "old certificate still served");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connection made before the reload goes on.
    before.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
    assert_eq!(before.read_line(), "PONG\r\n");
}

#[test]
fn allow_non_tls_accepts_both() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let config = format!(
        "allow_non_tls: true\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
        p(&cert),
        p(&key)
    );
    let server = Server::start_with_config(Some(&config), &[]);
    assert!(server.wait_for_log(
        "TLS available for client connections",
        Duration::from_secs(5)
    ));
    let mut plain = common::Raw::connect(server.port);
    let info = info_json(&plain.info);
    assert!(info.get("tls_required").is_none());
    assert_eq!(info["tls_available"], true);
    plain.send(common::CONNECT);
    plain.send(b"SUB a 1\r\nPUB a 1\r\nx\r\n");
    assert_eq!(plain.ping_sync(), b"MSG a 1 1\r\nx\r\n");

    let mut tls = TlsRaw::connect(server.port, client_config(&pki.ca_path(), None), false);
    tls.handshake().unwrap();
    tls.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
    assert_eq!(tls.read_line(), "PONG\r\n");
}

#[test]
fn varz_reports_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "http_port: {http}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 1.5\n}}\n",
        p(&cert),
        p(&key),
        p(&pki.ca_path())
    );
    let _server = Server::start_with_config(Some(&config), &[]);
    let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /varz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["tls_required"], true);
    assert_eq!(v["tls_verify"], true);
    assert_eq!(v["tls_timeout"], 1.5);
    // nats-server's default authentication timeout with TLS: tls timeout + 1 s.
    assert_eq!(v["auth_timeout"], 2.5);
}

#[tokio::test]
async fn connz_shows_tls_and_pinned_certs_are_enforced() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let pinned = pki.client_cert("pinned", &[(DnType::CommonName, "pinned")], vec![]);
    let other = pki.client_cert("other", &[(DnType::CommonName, "other")], vec![]);
    let config = |extra: &str| {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n{extra}}}\n",
            p(&cert),
            p(&key),
            p(&pki.ca_path())
        )
    };
    let (server, http) = Server::start_monitored(Some(&config("")), &[]);
    let client = tls_client(&server, &pki.ca_path(), Some(&pinned))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let connz = common::http_json(http, "/connz");
    let conn = &connz["connections"][0];
    assert_eq!(conn["tls_version"], "1.3");
    assert!(conn["tls_cipher_suite"]
        .as_str()
        .unwrap()
        .starts_with("TLS_"));
    let peer = &conn["tls_peer_certs"][0];
    assert_eq!(peer["subject"], "CN=pinned");
    let spki = peer["spki_sha256"].as_str().unwrap().to_string();
    assert_eq!(spki.len(), 64);
    drop(client);
    // Closed connections keep their TLS details.
    let mut raw = TlsRaw::connect(
        server.port,
        client_config(&pki.ca_path(), Some(&pinned)),
        false,
    );
    raw.handshake().unwrap();
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed = loop {
        let closed = common::http_json(http, "/connz?state=closed");
        if closed["num_connections"] != 0 || Instant::now() > deadline {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(closed["connections"][0]["tls_version"], "1.3", "{closed}");
    assert_eq!(
        closed["connections"][0]["tls_peer_certs"][0]["subject"],
        "CN=pinned"
    );
    drop(server);

    let pin = format!("  pinned_certs: [\"{spki}\"]\n");
    let server = Server::start_with_config(Some(&config(&pin)), &[]);
    let ok = tls_client(&server, &pki.ca_path(), Some(&pinned))
        .await
        .unwrap();
    round_trip(&ok).await;
    assert!(tls_client(&server, &pki.ca_path(), Some(&other))
        .await
        .is_err());
    assert!(server.wait_for_log(
        "TLS handshake error: certificate not pinned",
        Duration::from_secs(5)
    ));
}

fn strait(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn configuration_errors() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "localhost");
    let cases = [
        (
            format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  cipher_suites: [\n    \"TLS_NOPE\"\n  ]\n}}\n",
                p(&cert),
                p(&key)
            ),
            ":5:5: cipher_suites: unrecognized cipher TLS_NOPE",
        ),
        (
            format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  curve_preferences: [\"CurveP521\"]\n}}\n",
                p(&cert),
                p(&key)
            ),
            "curve preference CurveP521 is not available in strait",
        ),
        (
            "tls {\n  cert_file: \"/nonexistent.pem\"\n  key_file: \"/nonexistent-key.pem\"\n}\n"
                .to_string(),
            ":1:5: tls: error parsing X509 certificate/key pair: open /nonexistent.pem:",
        ),
        (
            format!("tls {{\n  cert_file: \"{}\"\n}}\n", p(&cert)),
            "missing 'key_file' in TLS configuration",
        ),
        (
            format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: true\n}}\n",
                p(&cert),
                p(&key)
            ),
            ":4:12: timeout: error parsing tls config, 'timeout' wrong type",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = pki.dir.join(format!("bad{i}.conf"));
        std::fs::write(&path, text).unwrap();
        let out = strait(&["-t", "-c", p(&path)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} accepted");
        assert!(err.contains(expected), "case {i}: {err}");
    }
    let out = strait(&["-t", "--tlsverify", "--tlscert", p(&cert)]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("TLS Server private key must be present and valid"));
    let out = strait(&["-t", "--tls", "--tlscert", p(&cert), "--tlskey", p(&key)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
