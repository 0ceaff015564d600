//! The router without a runtime: what the integration tests check through
//! sockets, checked here directly.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::sim::{Delivered, TestIo};
use super::*;
use crate::accounts::{AccountsBuilder, Export, ImportDecl, ResponseType};

const G: u32 = crate::accounts::GLOBAL_ACCOUNT;

fn router(me: u16, peers: &[u16], accounts: Accounts) -> Router {
    Router::new(
        PeerId(me),
        peers.iter().map(|&p| PeerId(p)).collect(),
        Arc::new(accounts),
        "test".into(),
        7,
    )
}

fn sub(owner: u32, sid: &str, subject: &str, queue: Option<&str>) -> Rc<Subscription> {
    Rc::new(Subscription::new(
        SubscriberId(owner),
        Bytes::copy_from_slice(sid.as_bytes()),
        Bytes::copy_from_slice(subject.as_bytes()),
        queue.map(|q| Bytes::copy_from_slice(q.as_bytes())),
    ))
}

fn publish(
    r: &mut Router,
    io: &mut TestIo,
    account: u32,
    subject: &str,
    reply: &str,
    payload: &str,
) -> Routed {
    publish_as(
        r,
        io,
        account,
        Publisher::internal(None),
        subject,
        reply,
        payload,
    )
}

fn publish_as(
    r: &mut Router,
    io: &mut TestIo,
    account: u32,
    from: Publisher<'_>,
    subject: &str,
    reply: &str,
    payload: &str,
) -> Routed {
    let frame = Bytes::copy_from_slice(payload.as_bytes());
    let msg = Message {
        subject: subject.as_bytes(),
        deliver_as: b"",
        reply: reply.as_bytes(),
        header_len: 0,
        message: &frame,
        owner: &frame,
        zeros: Default::default(),
    };
    r.publish(io, from, account, msg)
}

fn sids(io: &mut TestIo) -> Vec<String> {
    let mut v: Vec<String> = io
        .delivered
        .drain(..)
        .map(|d| String::from_utf8_lossy(&d.sid).into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn wildcards_and_literals() {
    let mut r = router(0, &[], Accounts::default());
    let mut io = TestIo::new();
    for (sid, subject) in [
        ("1", "a.b"),
        ("2", "a.*"),
        ("3", "a.>"),
        ("4", ">"),
        ("5", "b"),
    ] {
        r.subscribe(&mut io, G, sub(1, sid, subject, None));
    }
    publish(&mut r, &mut io, G, "a.b", "", "x");
    assert_eq!(sids(&mut io), ["1", "2", "3", "4"]);
    publish(&mut r, &mut io, G, "a.b.c", "", "x");
    assert_eq!(sids(&mut io), ["3", "4"]);
    // Empty tokens match nothing.
    for bad in ["a..b", ".a", "a."] {
        assert!(!publish(&mut r, &mut io, G, bad, "", "x").any());
    }
    assert!(io.delivered.is_empty());
}

#[test]
fn queue_groups_deliver_once_and_skip_dead_members() {
    let mut r = router(0, &[], Accounts::default());
    let mut io = TestIo::new();
    for (owner, sid) in [(1, "1"), (2, "2"), (3, "3")] {
        let s = sub(owner, sid, "work", Some("q"));
        // Member 2's connection is closing: it takes nothing, and is not picked.
        s.detached.set(owner == 2);
        r.subscribe(&mut io, G, s);
    }
    r.subscribe(&mut io, G, sub(4, "4", "work", None));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        publish(&mut r, &mut io, G, "work", "", "x");
        let got = sids(&mut io);
        assert_eq!(got.len(), 2, "one queue member and the plain subscriber");
        assert!(got.contains(&"4".to_string()));
        seen.extend(got);
    }
    assert!(seen.contains("1") && seen.contains("3") && !seen.contains("2"));
}

#[test]
fn no_echo_skips_the_publishers_own_subscriptions() {
    let mut r = router(0, &[], Accounts::default());
    let mut io = TestIo::new();
    r.subscribe(&mut io, G, sub(1, "1", "x", None));
    r.subscribe(&mut io, G, sub(2, "2", "x", None));
    let quiet = Publisher {
        id: Some(SubscriberId(1)),
        echo: false,
        requester: None,
        no_responders: false,
    };
    publish_as(&mut r, &mut io, G, quiet, "x", "", "m");
    assert_eq!(sids(&mut io), ["2"]);
}

#[test]
fn auto_unsubscribe_after_max() {
    let mut r = router(1, &[0], Accounts::default());
    let mut io = TestIo::new();
    let s = sub(1, "9", "x", None);
    s.max.set(2);
    r.subscribe(&mut io, G, s);
    io.outbox.clear();
    for _ in 0..3 {
        publish(&mut r, &mut io, G, "x", "", "m");
    }
    assert_eq!(sids(&mut io), ["9", "9"]);
    assert_eq!(
        io.unsubscribed,
        [(SubscriberId(1), Bytes::from_static(b"9"))]
    );
    // The peer is told the interest is gone.
    assert!(matches!(
        io.outbox.as_slice(),
        [(PeerId(0), PeerMsg::Interest { count: 0, .. })]
    ));
}

#[test]
fn peers_get_interest_and_messages_once_per_peer() {
    let mut a = router(0, &[1, 2], Accounts::default());
    let mut b = router(1, &[0, 2], Accounts::default());
    let mut io_a = TestIo::new();
    let mut io_b = TestIo::new();
    b.subscribe(&mut io_b, G, sub(1, "1", "x.*", None));
    b.subscribe(&mut io_b, G, sub(2, "2", "x.y", None));
    b.subscribe(&mut io_b, G, sub(3, "3", "x.y", Some("q")));
    for (peer, msg) in io_b.outbox.drain(..) {
        if peer == PeerId(0) {
            a.handle(&mut io_a, PeerId(1), msg);
        }
    }
    assert!(publish(&mut a, &mut io_a, G, "x.y", "", "m").remote);
    let sent: Vec<_> = io_a.outbox.drain(..).collect();
    assert_eq!(
        sent.len(),
        1,
        "one message for the peer, whatever it matches"
    );
    let (peer, msg) = sent.into_iter().next().unwrap();
    assert_eq!(peer, PeerId(1));
    match &msg {
        PeerMsg::Deliver {
            plain,
            queues,
            origin,
            ..
        } => {
            assert!(*plain);
            assert_eq!(queues.len(), 1);
            assert_eq!(*origin, PeerId(0));
        }
        other => panic!("unexpected {other:?}"),
    }
    b.handle(&mut io_b, PeerId(0), msg);
    assert_eq!(sids(&mut io_b), ["1", "2", "3"]);
    // What a peer delivers here is not routed on to any peer.
    assert!(io_b.outbox.is_empty());
}

#[test]
fn barrier_completes_after_every_peer_acknowledged() {
    let mut a = router(0, &[1, 2], Accounts::default());
    let mut io = TestIo::new();
    let id = a.begin_barrier(&mut io).unwrap();
    assert_eq!(io.outbox.len(), 2);
    io.outbox.clear();
    a.handle(&mut io, PeerId(1), PeerMsg::BarrierAck { id });
    assert!(a.barrier_pending(id) && io.barriers_done.is_empty());
    a.handle(&mut io, PeerId(2), PeerMsg::BarrierAck { id });
    assert!(!a.barrier_pending(id));
    assert_eq!(io.barriers_done, [id]);
    // A barrier is answered where it arrives.
    a.handle(&mut io, PeerId(2), PeerMsg::Barrier { id: 77 });
    assert!(matches!(
        io.outbox.as_slice(),
        [(PeerId(2), PeerMsg::BarrierAck { id: 77 })]
    ));
    assert!(router(0, &[], Accounts::default())
        .begin_barrier(&mut io)
        .is_none());
}

fn export(subject: &str, service: bool) -> Export {
    Export {
        subject: subject.into(),
        service,
        accounts: None,
        response_type: ResponseType::Singleton,
        response_threshold: Duration::from_secs(2),
    }
}

fn import(importer: &str, exporter: &str, subject: &str, service: bool) -> ImportDecl {
    ImportDecl {
        importer: importer.into(),
        exporter: exporter.into(),
        subject: subject.into(),
        service,
        prefix: None,
        to: None,
        share: false,
    }
}

fn two_accounts() -> (Accounts, u32, u32) {
    let mut b = AccountsBuilder::new();
    b.add_account("A").unwrap();
    b.add_account("B").unwrap();
    b.add_export("B", export("events.>", false));
    b.add_export("B", export("svc", true));
    b.add_import(ImportDecl {
        prefix: Some("from_b".into()),
        ..import("A", "B", "events.>", false)
    });
    b.add_import(ImportDecl {
        to: Some("ask".into()),
        ..import("A", "B", "svc", true)
    });
    let accounts = b.build().unwrap();
    let (a, b) = (accounts.index("A").unwrap(), accounts.index("B").unwrap());
    (accounts, a, b)
}

#[test]
fn stream_imports_map_into_the_importer() {
    let (accounts, a, b) = two_accounts();
    let mut r = router(0, &[], accounts);
    let mut io = TestIo::new();
    r.subscribe(&mut io, a, sub(1, "1", "from_b.events.>", None));
    r.subscribe(&mut io, b, sub(2, "2", "events.>", None));
    publish(&mut r, &mut io, b, "events.x", "", "m");
    let mut got: Vec<_> = io.delivered.drain(..).map(|d| (d.sid, d.subject)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                Bytes::from_static(b"1"),
                Bytes::from_static(b"from_b.events.x")
            ),
            (Bytes::from_static(b"2"), Bytes::from_static(b"events.x")),
        ]
    );
    // Nothing flows back the other way.
    publish(&mut r, &mut io, a, "events.x", "", "m");
    assert!(io.delivered.is_empty());
}

#[test]
fn service_imports_route_requests_and_one_response_back() {
    let (accounts, a, b) = two_accounts();
    let mut r = router(0, &[], accounts);
    let mut io = TestIo::new();
    r.subscribe(&mut io, b, sub(2, "svc", "svc", None));
    r.subscribe(&mut io, a, sub(1, "inbox", "_INBOX.>", None));
    assert!(publish(&mut r, &mut io, a, "ask", "_INBOX.1", "req").local);
    let request = io.delivered.pop().expect("the request reached the service");
    assert_eq!(request.subject, Bytes::from_static(b"svc"));
    assert!(request.reply.starts_with(b"_R_."));
    let info = std::str::from_utf8(&request.message[..request.header_len]).unwrap();
    assert!(
        info.contains("Nats-Request-Info: {\"acc\":\"A\"}"),
        "{info}"
    );
    assert_eq!(r.open_responses(), 1);
    let reply = String::from_utf8(request.reply.to_vec()).unwrap();
    publish(&mut r, &mut io, b, &reply, "", "resp");
    let response = io.delivered.pop().expect("the response came back");
    assert_eq!(response.subject, Bytes::from_static(b"_INBOX.1"));
    assert_eq!(response.message, Bytes::from_static(b"resp"));
    // Singleton: the route back closed with the first response.
    assert_eq!(r.open_responses(), 0);
    publish(&mut r, &mut io, b, &reply, "", "again");
    assert!(io.delivered.is_empty());
}

#[test]
fn response_routes_expire_after_the_threshold() {
    let (accounts, a, b) = two_accounts();
    let mut r = router(0, &[1], accounts);
    let mut io = TestIo::new();
    r.subscribe(&mut io, b, sub(2, "svc", "svc", None));
    publish(&mut r, &mut io, a, "ask", "_INBOX.1", "req");
    assert_eq!(r.open_responses(), 1);
    io.outbox.clear();
    let now = io.now;
    r.expire_responses(&mut io, now + Duration::from_secs(1));
    assert_eq!(r.open_responses(), 1);
    r.expire_responses(&mut io, now + Duration::from_secs(3));
    assert_eq!(r.open_responses(), 0);
    // The peers learn that the `_R_.` subject is gone.
    assert!(matches!(
        io.outbox.as_slice(),
        [(_, PeerMsg::Interest { count: 0, .. })]
    ));
    // A request nobody serves opens no route back.
    let mut r2 = router(0, &[], two_accounts().0);
    publish(&mut r2, &mut io, a, "ask", "_INBOX.1", "req");
    assert_eq!(r2.open_responses(), 0);
}

#[test]
fn no_responders_goes_to_the_requesters_first_matching_subscription() {
    let mut r = router(0, &[], Accounts::default());
    let mut io = TestIo::new();
    r.subscribe(&mut io, G, sub(1, "a", "_INBOX.>", None));
    r.subscribe(&mut io, G, sub(2, "b", "_INBOX.>", None));
    r.no_responders(&mut io, SubscriberId(1), G, b"req", b"_INBOX.7");
    let d = io.delivered.pop().unwrap();
    assert!(io.delivered.is_empty());
    assert_eq!(
        (d.owner, d.subject.as_ref()),
        (SubscriberId(1), &b"_INBOX.7"[..])
    );
    assert!(d.message.starts_with(b"NATS/1.0 503\r\n"));
}

#[test]
fn reloaded_accounts_append_and_replace_imports() {
    let mut r = router(0, &[], Accounts::default());
    let (accounts, a, b) = two_accounts();
    r.set_accounts(Arc::new(accounts));
    let mut io = TestIo::new();
    r.subscribe(&mut io, a, sub(1, "1", "from_b.>", None));
    publish(&mut r, &mut io, b, "events.x", "", "m");
    assert_eq!(sids(&mut io), ["1"]);
    // The imports go away when the configuration drops them.
    let mut plain = Accounts::default();
    for name in ["A", "B"] {
        let mut spec =
            two_accounts().0.list[two_accounts().0.index(name).unwrap() as usize].clone();
        spec.stream_imports.clear();
        spec.service_imports.clear();
        plain.list.push(spec);
    }
    r.set_accounts(Arc::new(plain));
    publish(&mut r, &mut io, b, "events.x", "", "m");
    assert!(io.delivered.is_empty());
}

#[test]
fn shared_message_slices_point_into_the_frame() {
    let frame = Bytes::from_static(b"PUB x 5\r\nhello\r\n");
    let msg = Message {
        subject: &frame[4..5],
        deliver_as: b"",
        reply: b"",
        header_len: 0,
        message: &frame[9..14],
        owner: &frame,
        zeros: Default::default(),
    };
    let shared = msg.share(msg.message);
    assert_eq!(shared.as_ptr(), frame[9..].as_ptr());
    assert_eq!(msg.share(b"other"), Bytes::from_static(b"other"));
}

/// Moves everything `from` has queued for `to` into `to`.
fn pass(from: &mut TestIo, from_id: u16, to: &mut Router, to_io: &mut TestIo) {
    let msgs: Vec<PeerMsg> = from
        .outbox
        .drain(..)
        .filter(|(peer, _)| *peer == to.me())
        .map(|(_, m)| m)
        .collect();
    for m in msgs {
        to.handle(to_io, PeerId(from_id), m);
    }
}

fn remote_entries(r: &Router) -> usize {
    let mut n = 0;
    r.account(G)
        .unwrap()
        .sublist
        .for_each(|_, _, e| n += usize::from(matches!(e, Interest::Remote(_))));
    n
}

#[test]
fn folded_interest_reaches_the_peer_which_counts_wasted_hops() {
    let mut a = router(0, &[1], Accounts::default());
    let mut b = router(1, &[0], Accounts::default());
    b.set_summary_limits(2, 100);
    let (mut io_a, mut io_b) = (TestIo::new(), TestIo::new());
    let subs: Vec<_> = (1..=50)
        .map(|i| sub(1, &i.to_string(), &format!("dev.{i}"), None))
        .collect();
    for s in &subs {
        b.subscribe(&mut io_b, G, s.clone());
    }
    pass(&mut io_b, 1, &mut a, &mut io_a);
    // The peer holds one pattern for fifty subscriptions.
    assert_eq!(remote_entries(&a), 1);
    assert_eq!(b.account(G).unwrap().local_subscriptions(), 50);
    assert!(publish(&mut a, &mut io_a, G, "dev.7", "", "m").remote);
    assert!(publish(&mut a, &mut io_a, G, "dev.99", "", "m").remote);
    assert!(!publish(&mut a, &mut io_a, G, "other", "", "m").any());
    pass(&mut io_a, 0, &mut b, &mut io_b);
    assert_eq!(sids(&mut io_b), ["7"]);
    assert_eq!(b.stats.wasted_hops, 1);
    // The pattern stays while anything below it does, and goes with the last.
    for s in &subs[..49] {
        b.unsubscribe(&mut io_b, G, s);
    }
    pass(&mut io_b, 1, &mut a, &mut io_a);
    assert_eq!(remote_entries(&a), 1);
    b.unsubscribe(&mut io_b, G, &subs[49]);
    pass(&mut io_b, 1, &mut a, &mut io_a);
    assert_eq!(remote_entries(&a), 0);
}

#[test]
fn a_covered_subscription_owes_a_barrier_until_the_cover_is_applied() {
    let mut a = router(0, &[1], Accounts::default());
    let mut b = router(1, &[0], Accounts::default());
    let (mut io_a, mut io_b) = (TestIo::new(), TestIo::new());
    assert!(b.subscribe(&mut io_b, G, sub(1, "1", "x", None)));
    // The same subject again changes nothing the peer is told, but the first
    // announcement is still in flight.
    assert!(b.subscribe(&mut io_b, G, sub(2, "2", "x", None)));
    let barrier = b.begin_barrier(&mut io_b).unwrap();
    pass(&mut io_b, 1, &mut a, &mut io_a);
    pass(&mut io_a, 0, &mut b, &mut io_b);
    assert!(!b.barrier_pending(barrier));
    assert!(!b.subscribe(&mut io_b, G, sub(3, "3", "x", None)));
}

#[test]
fn a_request_only_folded_patterns_match_asks_whether_anyone_answered() {
    let mut a = router(0, &[1], Accounts::default());
    let mut b = router(1, &[0], Accounts::default());
    b.set_summary_limits(1, 100);
    let (mut io_a, mut io_b) = (TestIo::new(), TestIo::new());
    b.subscribe(&mut io_b, G, sub(1, "1", "svc.1", None));
    b.subscribe(&mut io_b, G, sub(1, "2", "svc.2", None));
    pass(&mut io_b, 1, &mut a, &mut io_a);
    // The requester's own inbox subscription, where a no-responders status goes.
    a.subscribe(&mut io_a, G, sub(5, "9", "inbox.*", None));
    io_a.outbox.clear();
    let requester = Publisher {
        id: Some(SubscriberId(5)),
        echo: true,
        requester: None,
        no_responders: true,
    };
    for (subject, answered) in [("svc.2", true), ("svc.3", false)] {
        let routed = publish_as(&mut a, &mut io_a, G, requester, subject, "inbox.1", "q");
        assert!(routed.any() && !routed.remote_certain);
        assert!(io_a.delivered.is_empty(), "nothing is known yet");
        pass(&mut io_a, 0, &mut b, &mut io_b);
        io_b.delivered.clear();
        pass(&mut io_b, 1, &mut a, &mut io_a);
        let statuses: Vec<Delivered> = io_a.delivered.drain(..).collect();
        if answered {
            assert!(statuses.is_empty(), "{subject}: someone took it");
        } else {
            assert_eq!(statuses.len(), 1, "{subject}: nobody is there");
            assert_eq!(&statuses[0].subject[..], b"inbox.1");
            assert!(statuses[0].header_len > 0);
        }
    }
    // Without folding, an unmatched request is answered at once.
    let routed = publish_as(&mut a, &mut io_a, G, requester, "nothing", "inbox.1", "q");
    assert!(!routed.any());
    assert_eq!(io_a.delivered.len(), 1);
}

/// The Deliver messages `io` queued.
fn delivers(io: &TestIo) -> usize {
    io.outbox
        .iter()
        .filter(|(_, m)| matches!(m, PeerMsg::Deliver { .. }))
        .count()
}

#[test]
fn a_subject_a_peer_misses_is_not_sent_there_again_until_its_interest_grows() {
    let mut a = router(0, &[1], Accounts::default());
    let mut b = router(1, &[0], Accounts::default());
    b.set_summary_limits(2, 100);
    let (mut io_a, mut io_b) = (TestIo::new(), TestIo::new());
    for i in 1..=50 {
        b.subscribe(
            &mut io_b,
            G,
            sub(1, &i.to_string(), &format!("dev.{i}"), None),
        );
    }
    pass(&mut io_b, 1, &mut a, &mut io_a);
    // A run of messages on a subject nothing there wants is told once.
    for _ in 0..3 {
        assert!(publish(&mut a, &mut io_a, G, "dev.99", "", "m").remote);
    }
    assert_eq!(delivers(&io_a), 3);
    pass(&mut io_a, 0, &mut b, &mut io_b);
    assert_eq!(b.stats.wasted_hops, 3);
    let misses = io_b
        .outbox
        .iter()
        .filter(|(_, m)| matches!(m, PeerMsg::Miss { .. }))
        .count();
    assert_eq!(misses, 1);
    pass(&mut io_b, 1, &mut a, &mut io_a);
    // Now it stays here; a subject the peer wants still goes.
    assert!(!publish(&mut a, &mut io_a, G, "dev.99", "", "m").any());
    assert_eq!(delivers(&io_a), 0);
    assert_eq!(a.stats.hops_saved, 1);
    assert!(publish(&mut a, &mut io_a, G, "dev.7", "", "m").remote);
    pass(&mut io_a, 0, &mut b, &mut io_b);
    assert_eq!(sids(&mut io_b), ["7"]);
    // A subscription the pattern already covers tells the peer interest grew,
    // and owes a barrier for it.
    let late = sub(2, "late", "dev.99", None);
    assert!(b.subscribe(&mut io_b, G, late));
    assert!(io_b
        .outbox
        .iter()
        .any(|(_, m)| matches!(m, PeerMsg::Grew { .. })));
    let barrier = b.begin_barrier(&mut io_b).unwrap();
    pass(&mut io_b, 1, &mut a, &mut io_a);
    pass(&mut io_a, 0, &mut b, &mut io_b);
    assert!(!b.barrier_pending(barrier));
    assert!(publish(&mut a, &mut io_a, G, "dev.99", "", "m").remote);
    pass(&mut io_a, 0, &mut b, &mut io_b);
    assert_eq!(sids(&mut io_b), ["late"]);
    // With nothing told missing since, the next covered subscription says nothing.
    io_b.outbox.clear();
    assert!(!b.subscribe(&mut io_b, G, sub(2, "later", "dev.98", None)));
    assert!(io_b.outbox.is_empty());
}

#[test]
fn a_request_a_peer_said_it_misses_gets_no_responders_at_once() {
    let mut a = router(0, &[1], Accounts::default());
    let mut b = router(1, &[0], Accounts::default());
    b.set_summary_limits(1, 100);
    let (mut io_a, mut io_b) = (TestIo::new(), TestIo::new());
    b.subscribe(&mut io_b, G, sub(1, "1", "svc.1", None));
    b.subscribe(&mut io_b, G, sub(1, "2", "svc.2", None));
    pass(&mut io_b, 1, &mut a, &mut io_a);
    a.subscribe(&mut io_a, G, sub(5, "9", "inbox.*", None));
    io_a.outbox.clear();
    let requester = Publisher {
        id: Some(SubscriberId(5)),
        echo: true,
        requester: None,
        no_responders: true,
    };
    publish_as(&mut a, &mut io_a, G, requester, "svc.3", "inbox.1", "q");
    pass(&mut io_a, 0, &mut b, &mut io_b);
    pass(&mut io_b, 1, &mut a, &mut io_a);
    assert_eq!(io_a.delivered.drain(..).count(), 1, "the probe's answer");
    let routed = publish_as(&mut a, &mut io_a, G, requester, "svc.3", "inbox.2", "q");
    assert!(!routed.any());
    assert_eq!(
        io_a.delivered.len(),
        1,
        "no-responders without a round trip"
    );
}
