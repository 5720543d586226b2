//! Migration over real loopback sockets: a broken agent-to-agent TCP
//! connection, a removed local address, a forged RSYN; event overflow.

mod datapath_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datapath_common::*;
use sal_core::datapath::{Datapath, DatapathConfig, Event};

/// Bulk transfer both ways; `disturb` runs once `mark` bytes reached B.
fn transfer_with(p: Pair, total: usize, mark: u64, disturb: impl FnOnce(&Pair)) -> Pair {
    let up = pattern(total, 11);
    let down = pattern(total / 2, 12);
    let (up_sha, down_sha) = (sha(&up), sha(&down));
    let at_b = Arc::new(AtomicU64::new(0));
    let s_rd = read_all(p.server.try_clone().unwrap(), at_b.clone());
    let c_rd = read_all(p.client.try_clone().unwrap(), Arc::new(AtomicU64::new(0)));
    let c_wr = send_all(p.client.try_clone().unwrap(), up);
    let s_wr = send_all(p.server.try_clone().unwrap(), down);
    let end = Instant::now() + WAIT;
    while at_b.load(Ordering::Relaxed) < mark {
        assert!(Instant::now() < end, "transfer stalled before the fault");
        std::thread::sleep(Duration::from_millis(1));
    }
    disturb(&p);
    assert_eq!(s_rd.join().unwrap(), (up_sha, total), "A → B intact");
    assert_eq!(c_rd.join().unwrap(), (down_sha, total / 2), "B → A intact");
    drop((c_wr.join().unwrap(), s_wr.join().unwrap()));
    p
}

fn is_migrated(e: &Event) -> bool {
    matches!(e, Event::Migrated { .. })
}

#[test]
fn broken_path_mid_transfer_migrates_without_loss() {
    let p = connected_pair("move.test");
    let p = transfer_with(p, 16 << 20, 2 << 20, |p| {
        assert!(p.a.debug_break_path(p.a_flow));
    });
    let mut ev = Events::new(&p.a);
    match ev.wait("migrated", is_migrated) {
        Event::Migrated {
            flow_id, remote, ..
        } => {
            assert_eq!(flow_id, p.a_flow);
            assert_eq!(remote, sal(&p.b), "the initiator redials B's SAL endpoint");
        }
        _ => unreachable!(),
    }
    Events::new(&p.b).wait("migrated", is_migrated);
    assert!(stat(&p.a, "migrations") >= 1);
    match ev.wait("flow_closed", |e| matches!(e, Event::FlowClosed { .. })) {
        Event::FlowClosed { reason, .. } => assert_eq!(reason, "fin"),
        _ => unreachable!(),
    }
}

#[test]
fn repeated_breaks_on_both_sides_still_deliver_everything() {
    let p = connected_pair("flaky.test");
    transfer_with(p, 12 << 20, 1 << 20, |p| {
        for i in 0..4 {
            let (dp, id) = if i % 2 == 0 {
                (&p.a, p.a_flow)
            } else {
                (&p.b, p.b_flow)
            };
            dp.debug_break_path(id);
            std::thread::sleep(Duration::from_millis(150));
        }
    });
}

#[test]
fn removed_local_address_moves_the_flow_to_another_one() {
    let p = connected_pair("addr.test");
    p.a.address_added("127.0.0.2".parse().unwrap());
    let p = transfer_with(p, 8 << 20, 1 << 20, |p| {
        p.a.address_removed("127.0.0.1".parse().unwrap());
    });
    match Events::new(&p.a).wait("migrated", is_migrated) {
        Event::Migrated { local, .. } => {
            assert_eq!(
                local.ip().to_string(),
                "127.0.0.2",
                "bound to the remaining address"
            )
        }
        _ => unreachable!(),
    }
}

#[test]
fn forged_rsyn_on_a_new_connection_is_dropped() {
    let mut p = connected_pair("forge.test");
    for dst in [p.b_flow, 0x1234_5678] {
        let mut s = TcpStream::connect(sal(&p.b)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&forged_rsyn(dst, p.a_flow)).unwrap();
        let mut buf = [0u8; 64];
        // B answers nothing and closes the connection.
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    }
    let end = Instant::now() + WAIT;
    while stat(&p.b, "rsyn_rejected") < 2 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The flow still works, on its original path.
    p.client.write_all(b"still here").unwrap();
    let mut got = [0u8; 10];
    p.server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    let mut ev = Events::new(&p.b);
    ev.drain();
    assert!(!ev.seen.iter().any(is_migrated), "{:?}", ev.seen);
}

#[test]
fn event_overflow_is_counted_and_reported_once() {
    let a = Datapath::start(DatapathConfig {
        event_queue: 2,
        ..config()
    })
    .unwrap();
    for rid in 0..5 {
        let (_app, fd) = app_pair();
        a.connect(rid, sid("nowhere.test"), fd, WAIT).unwrap();
    }
    let end = Instant::now() + WAIT;
    while stat(&a, "connect_failures") < 5 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(5));
    }
    let first = a.poll_events(10, Duration::from_millis(100));
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|e| matches!(e, Event::ConnectFailed { .. })));
    let next = a.poll_events(10, Duration::from_millis(100));
    assert!(
        matches!(next[..], [Event::Overflow { dropped: 3 }]),
        "{next:?}"
    );
    assert_eq!(stat(&a, "events_dropped"), 3);
}

#[test]
fn acceptor_address_removed_while_the_initiator_sends() {
    let p = connected_pair("acceptor-addr.test");
    p.b.address_added("127.0.0.2".parse().unwrap());
    let p = transfer_with(p, 16 << 20, 2 << 20, |p| {
        p.b.address_removed("127.0.0.1".parse().unwrap());
    });
    match Events::new(&p.b).wait("migrated", is_migrated) {
        Event::Migrated { local, .. } => assert_eq!(local.ip().to_string(), "127.0.0.2"),
        _ => unreachable!(),
    }
    Events::new(&p.a).wait("migrated", is_migrated);
}
