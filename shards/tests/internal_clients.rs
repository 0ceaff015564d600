//! Internal clients against a running server of three shards, with plain TCP
//! clients on every shard: an internal subscriber gets a client's publish from
//! another shard; an internal publish reaches clients on every shard, in its own
//! account and through an import into another; a request an internal client
//! sends through a service import gets its reply back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use strait_shards::accounts::{AccountsBuilder, Export, ImportDecl, ResponseType};
use strait_shards::auth::User;
use strait_shards::{ServerHandle, ServerOptions};

const SHARDS: usize = 3;
const WAIT: Duration = Duration::from_secs(5);

struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    shard: usize,
}

impl RawClient {
    fn connect(port: u16, user: &str) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(info.trim_start_matches("INFO ").trim()).expect("INFO json");
        let cid = json["client_id"].as_u64().expect("client_id");
        let mut client = RawClient {
            reader,
            writer: stream,
            shard: (cid % SHARDS as u64) as usize,
        };
        client.send(&format!(
            "CONNECT {{\"user\":\"{user}\",\"pass\":\"{user}\",\"verbose\":false,\"protocol\":1,\"headers\":true}}\r\n"
        ));
        client.ping();
        client
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// PING, then wait for the PONG (the interest barrier is behind it).
    fn ping(&mut self) {
        self.send("PING\r\n");
        loop {
            let line = self.line();
            if line == "PONG" {
                return;
            }
            assert!(!line.starts_with("-ERR"), "{line}");
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        assert!(!line.is_empty(), "connection closed");
        line.trim_end().to_string()
    }

    /// The next message: (subject, reply, payload).
    fn next_msg(&mut self) -> (String, String, String) {
        loop {
            let line = self.line();
            if line == "PING" {
                self.send("PONG\r\n");
                continue;
            }
            let parts: Vec<&str> = line.split(' ').collect();
            let (subject, reply, header_len, total) = match parts.as_slice() {
                ["MSG", s, _sid, n] => (*s, "", 0, n.parse::<usize>().unwrap()),
                ["MSG", s, _sid, r, n] => (*s, *r, 0, n.parse::<usize>().unwrap()),
                ["HMSG", s, _sid, h, n] => (*s, "", h.parse().unwrap(), n.parse().unwrap()),
                ["HMSG", s, _sid, r, h, n] => (*s, *r, h.parse().unwrap(), n.parse().unwrap()),
                _ => continue,
            };
            let mut body = vec![0; total + 2];
            self.reader.read_exact(&mut body).unwrap();
            let payload = String::from_utf8_lossy(&body[header_len..total]).into_owned();
            return (subject.to_string(), reply.to_string(), payload);
        }
    }
}

fn server() -> (ServerHandle, u32, u32) {
    let mut b = AccountsBuilder::new();
    b.add_account("A").unwrap();
    b.add_account("B").unwrap();
    for (subject, service) in [("events.>", false), ("svc.>", true)] {
        b.add_export(
            "A",
            Export {
                subject: subject.into(),
                service,
                accounts: None,
                response_type: ResponseType::Singleton,
                response_threshold: Duration::from_secs(2),
            },
        );
        b.add_import(ImportDecl {
            importer: "B".into(),
            exporter: "A".into(),
            subject: subject.into(),
            service,
            prefix: (!service).then(|| "a".into()),
            to: None,
            share: false,
        });
    }
    let accounts = b.build().unwrap();
    let (a, b) = (accounts.index("A").unwrap(), accounts.index("B").unwrap());
    let mut opts = ServerOptions {
        host: "127.0.0.1".into(),
        port: 0,
        shards: SHARDS,
        accounts: Arc::new(accounts),
        ..ServerOptions::default()
    };
    for (name, account) in [("a", a), ("b", b)] {
        let mut user = User::new(name, name);
        user.account = account;
        opts.auth.users.insert(name.into(), user);
    }
    (strait_shards::start(opts).expect("server starts"), a, b)
}

/// Clients of `user` until every shard has one, one per shard.
fn one_per_shard(port: u16, user: &str) -> Vec<RawClient> {
    let mut per_shard: Vec<Option<RawClient>> = (0..SHARDS).map(|_| None).collect();
    let deadline = Instant::now() + WAIT;
    while per_shard.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "no client landed on some shard");
        let c = RawClient::connect(port, user);
        let shard = c.shard;
        per_shard[shard].get_or_insert(c);
    }
    per_shard.into_iter().flatten().collect()
}

#[test]
fn internal_clients_subscribe_publish_and_get_replies_across_shards() {
    let (server, a, b) = server();
    let port = server.port;
    let commander = server.commander.clone();

    // An internal subscriber on shard 0 gets a client's publish from another shard.
    let listener = block_on(commander.internal_client(0, a)).expect("internal client");
    let sid = block_on(listener.subscribe("orders.>", None)).expect("subscribed");
    let mut publishers = one_per_shard(port, "a");
    let publisher = publishers.iter_mut().find(|c| c.shard != 0).unwrap();
    publisher.send("PUB orders.1 5\r\nhello\r\n");
    publisher.ping();
    let got = listener.receiver().recv_timeout(WAIT).expect("delivered");
    assert_eq!((&got.sid, &got.subject[..]), (&sid, &b"orders.1"[..]));
    assert_eq!(got.payload(), b"hello");

    // An internal publish reaches clients on every shard, in its account and
    // through the stream import into B (as `a.events.x`).
    let mut in_a = publishers;
    let mut in_b = one_per_shard(port, "b");
    for c in &mut in_a {
        c.send("SUB events.x 1\r\n");
        c.ping();
    }
    for c in &mut in_b {
        c.send("SUB a.events.x 1\r\n");
        c.ping();
    }
    let speaker = block_on(commander.internal_client(1, a)).expect("internal client");
    let routed = block_on(speaker.publish("events.x", "", None, b"news"));
    assert!(routed.local && routed.remote, "{routed:?}");
    for c in &mut in_a {
        assert_eq!(c.next_msg(), ("events.x".into(), "".into(), "news".into()));
    }
    for c in &mut in_b {
        assert_eq!(
            c.next_msg(),
            ("a.events.x".into(), "".into(), "news".into())
        );
    }

    // A request from an internal client in B, through the service import, to a
    // client of A on another shard; the reply comes back to the internal client.
    let requester = block_on(commander.internal_client(2, b)).expect("internal client");
    block_on(requester.subscribe("_INBOX.internal.>", None)).expect("subscribed");
    let service = in_a.iter_mut().find(|c| c.shard != 2).unwrap();
    service.send("SUB svc.> 2\r\n");
    service.ping();
    let routed = block_on(requester.publish("svc.echo", "_INBOX.internal.1", None, b"ping?"));
    assert!(routed.remote, "{routed:?}");
    let (subject, reply, payload) = service.next_msg();
    assert_eq!((subject.as_str(), payload.as_str()), ("svc.echo", "ping?"));
    assert!(reply.starts_with("_R_."), "{reply}");
    service.send(&format!("PUB {reply} 5\r\npong!\r\n"));
    service.ping();
    let answer = requester
        .receiver()
        .recv_timeout(WAIT)
        .expect("the reply came back");
    assert_eq!(&answer.subject[..], b"_INBOX.internal.1");
    assert_eq!(answer.payload(), b"pong!");

    // A request nobody serves gets a no-responders status on the requester's
    // matching subscription, as a client's would.
    let status = b"NATS/1.0\r\n\r\n";
    block_on(requester.publish("nobody.home", "_INBOX.internal.2", Some(status), b""));
    let none = requester
        .receiver()
        .recv_timeout(WAIT)
        .expect("no responders");
    assert!(none.headers().starts_with(b"NATS/1.0 503"), "{none:?}");

    server.shutdown();
    server.join();
}
