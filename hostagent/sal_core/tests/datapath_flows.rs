//! Data path over real loopback sockets: set-up, relay, close, refusal,
//! failover, expose (translator), greetings, DELAY, local DEMUX, shutdown.

mod datapath_common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use datapath_common::*;
use sal_core::datapath::Event;

#[test]
fn echo_bulk_both_ways_and_orderly_close() {
    let mut p = connected_pair("echo.test");
    p.client.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    p.server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    p.server.write_all(b"world").unwrap();
    p.client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");

    let up = pattern(6 << 20, 1);
    let down = pattern(3 << 20, 2);
    let (up_sha, down_sha) = (sha(&up), sha(&down));
    let c_rd = read_all(p.client.try_clone().unwrap(), Arc::new(AtomicU64::new(0)));
    let s_rd = read_all(p.server.try_clone().unwrap(), Arc::new(AtomicU64::new(0)));
    let c_wr = send_all(p.client, up);
    let s_wr = send_all(p.server, down);
    assert_eq!(s_rd.join().unwrap(), (up_sha, 6 << 20));
    assert_eq!(c_rd.join().unwrap(), (down_sha, 3 << 20));
    drop((c_wr.join().unwrap(), s_wr.join().unwrap()));

    let closed = |e: &Event| matches!(e, Event::FlowClosed { .. });
    for dp in [&p.a, &p.b] {
        match Events::new(dp).wait("flow_closed", closed) {
            Event::FlowClosed { reason, .. } => assert_eq!(reason, "fin"),
            _ => unreachable!(),
        }
        assert_eq!(stat(dp, "flows_active"), 0);
    }
    assert_eq!(stat(&p.a, "bytes_out"), 5 + (6 << 20));
    assert_eq!(stat(&p.a, "bytes_in"), 5 + (3 << 20));
    assert_eq!(stat(&p.b, "flows_accepted"), 1);
    assert_eq!(stat(&p.a, "flows_opened"), 1);
}

#[test]
fn bytes_queued_for_a_slow_app_survive_the_flows_close() {
    // B's app closes its side at once and reads only after the flow has
    // closed (TIME-WAIT 200 ms): what B's data path still held for it must
    // be written before its stream ends, not dropped with the flow.
    let p = connected_pair("slow-reader.test");
    p.server.shutdown(Shutdown::Write).unwrap();
    let up = pattern(900 << 10, 3); // within B's receive window (1 MiB)
    let up_sha = sha(&up);
    let c_wr = send_all(p.client.try_clone().unwrap(), up);
    let closed = |e: &Event| matches!(e, Event::FlowClosed { .. });
    match Events::new(&p.b).wait("flow_closed", closed) {
        Event::FlowClosed { reason, .. } => assert_eq!(reason, "fin"),
        _ => unreachable!(),
    }
    let s_rd = read_all(p.server.try_clone().unwrap(), Arc::new(AtomicU64::new(0)));
    assert_eq!(s_rd.join().unwrap(), (up_sha, 900 << 10));
    drop(c_wr.join().unwrap());
}

#[test]
fn refused_service_fails_naming_what_was_tried() {
    let a = start();
    let b = start(); // no listener, no rule: B refuses (no service)
    apply(&a, 1, vec![forward("nobody.test", &[(sal(&b), 0)])]);
    let (_app, fd) = app_pair();
    a.connect(9, sid("nobody.test"), fd, WAIT).unwrap();
    let mut ev = Events::new(&a);
    match ev.wait("target_failed", |e| matches!(e, Event::TargetFailed { .. })) {
        Event::TargetFailed {
            request_id,
            target,
            reason,
        } => {
            assert_eq!(
                (request_id, target, reason.as_str()),
                (9, sal(&b), "no service")
            );
        }
        _ => unreachable!(),
    }
    match ev.wait("connect_failed", |e| {
        matches!(e, Event::ConnectFailed { .. })
    }) {
        Event::ConnectFailed {
            request_id,
            reason,
            tried,
        } => {
            assert_eq!(request_id, 9);
            assert_eq!(tried, vec![(sal(&b), "no service".to_string())]);
            assert!(reason.contains(&sid("nobody.test").to_hex()), "{reason}");
            assert!(
                reason.contains(&format!("{} (no service)", sal(&b))),
                "{reason}"
            );
        }
        _ => unreachable!(),
    }
    assert_eq!(stat(&a, "connect_failures"), 1);
    assert_eq!(stat(&b, "flows_refused"), 1);
}

#[test]
fn closed_port_fails_over_to_the_next_target() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let a = start();
    let b = start();
    b.listen(1, None);
    apply(&b, 1, vec![demux("fo.test", 1)]);
    // Tier 0 (preferred) is the closed port; tier 1 is B.
    apply(&a, 1, vec![forward("fo.test", &[(dead, 0), (sal(&b), 1)])]);
    let (mut app, fd) = app_pair();
    a.connect(3, sid("fo.test"), fd, WAIT).unwrap();
    let mut ev = Events::new(&a);
    match ev.wait("target_failed", |e| matches!(e, Event::TargetFailed { .. })) {
        Event::TargetFailed { target, reason, .. } => {
            assert_eq!((target, reason.as_str()), (dead, "refused"))
        }
        _ => unreachable!(),
    }
    match ev.wait("connected", is_connected) {
        Event::Connected { target, .. } => assert_eq!(target, sal(&b)),
        _ => unreachable!(),
    }
    let mut server = match Events::new(&b).wait("accepted", is_accepted) {
        Event::Accepted { app_fd, .. } => app_of(app_fd),
        _ => unreachable!(),
    };
    app.write_all(b"x").unwrap();
    let mut one = [0u8];
    server.read_exact(&mut one).unwrap();
    assert_eq!(stat(&a, "failovers"), 1);
}

#[test]
fn exposed_listener_relays_to_a_local_tcp_server() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = echo.accept().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    });
    let a = start();
    let b = start();
    b.listen(2, Some(echo_addr));
    apply(&b, 1, vec![demux("legacy.test", 2)]);
    apply(&a, 1, vec![forward("legacy.test", &[(sal(&b), 0)])]);
    let (mut app, fd) = app_pair();
    a.connect(1, sid("legacy.test"), fd, WAIT).unwrap();
    Events::new(&a).wait("connected", is_connected);
    app.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    app.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    app.shutdown(Shutdown::Write).unwrap();
    assert_eq!(app.read(&mut got).unwrap(), 0, "EOF after the server's FIN");
    let mut evb = Events::new(&b);
    evb.wait("flow_closed", |e| matches!(e, Event::FlowClosed { .. }));
    assert!(
        !evb.seen.iter().any(is_accepted),
        "no Accepted in expose mode"
    );
}

#[test]
fn greeting_reaches_the_app_before_the_peers_first_bytes() {
    // The server speaks first (a banner) and closes at once, possibly before
    // the acceptor's set-up completed: the greeting must still come first,
    // and the banner must not be lost to an early close.
    let banner = TcpListener::bind("127.0.0.1:0").unwrap();
    let banner_addr = banner.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = banner.accept().unwrap();
        s.write_all(b"220 ready\n").unwrap();
        let _ = s.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let a = start();
    let b = start();
    b.listen(2, Some(banner_addr));
    apply(&b, 1, vec![demux("banner.test", 2)]);
    apply(&a, 1, vec![forward("banner.test", &[(sal(&b), 0)])]);
    let (mut app, fd) = app_pair();
    let reply = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    a.connect_with_greeting(1, sid("banner.test"), fd, WAIT, reply.clone())
        .unwrap();
    Events::new(&a).wait("connected", is_connected);
    app.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    app.read_to_end(&mut got).unwrap();
    assert_eq!(got, [reply.as_slice(), b"220 ready\n"].concat());
    Events::new(&a).wait("flow_closed", |e| matches!(e, Event::FlowClosed { .. }));
    assert_eq!(stat(&a, "bytes_in"), 10, "the greeting is not flow data");
}

#[test]
fn greeting_is_not_written_when_the_setup_fails_and_is_bounded() {
    let a = start();
    let (mut app, fd) = app_pair();
    a.connect_with_greeting(1, sid("nowhere.test"), fd, WAIT, b"ok".to_vec())
        .unwrap();
    Events::new(&a).wait("connect_failed", |e| {
        matches!(e, Event::ConnectFailed { .. })
    });
    let mut got = Vec::new();
    app.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "nothing but EOF on failure: {got:?}");
    let (_app, fd) = app_pair();
    let huge = vec![0u8; sal_core::datapath::MAX_GREETING + 1];
    assert!(a
        .connect_with_greeting(2, sid("x.test"), fd, WAIT, huge)
        .is_err());
}

#[test]
fn delayed_setup_is_released_or_dropped() {
    let a = start();
    let b = start();
    b.listen(1, None);
    apply(&b, 1, vec![demux("late.test", 1)]);
    apply(&a, 1, vec![delay("late.test")]);
    let mut ev = Events::new(&a);
    let (_app1, fd1) = app_pair();
    a.connect(1, sid("late.test"), fd1, WAIT).unwrap();
    let is_delayed = |e: &Event| matches!(e, Event::Delayed { request_id: 1, .. });
    match ev.wait("delayed", is_delayed) {
        Event::Delayed { service_id, .. } => assert_eq!(service_id, sid("late.test").bytes),
        _ => unreachable!(),
    }
    apply(&a, 2, vec![forward("late.test", &[(sal(&b), 0)])]);
    assert!(a.settle_delay(1, true));
    ev.wait("connected", is_connected);

    apply(&a, 3, vec![delay("late.test")]);
    let (_app2, fd2) = app_pair();
    a.connect(2, sid("late.test"), fd2, WAIT).unwrap();
    ev.wait("delayed", |e| {
        matches!(e, Event::Delayed { request_id: 2, .. })
    });
    assert!(a.settle_delay(2, false));
    assert!(!a.settle_delay(2, false), "already settled");
    match ev.wait("connect_failed", |e| {
        matches!(e, Event::ConnectFailed { .. })
    }) {
        Event::ConnectFailed { reason, .. } => {
            assert!(reason.contains("dropped by the control plane"), "{reason}")
        }
        _ => unreachable!(),
    }
}

#[test]
fn local_demux_loops_back_through_our_own_listener() {
    let a = start();
    a.listen(5, None);
    apply(&a, 1, vec![demux("self.test", 5)]);
    let (mut app, fd) = app_pair();
    a.connect(1, sid("self.test"), fd, WAIT).unwrap();
    let mut ev = Events::new(&a);
    ev.wait("connected", is_connected);
    let mut server = match ev.wait("accepted", is_accepted) {
        Event::Accepted {
            listener_id,
            app_fd,
            ..
        } => {
            assert_eq!(listener_id, 5);
            app_of(app_fd)
        }
        _ => unreachable!(),
    };
    app.write_all(b"loop").unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"loop");
}

#[test]
fn no_route_and_drop_fail_at_once() {
    let a = start();
    let (_app, fd) = app_pair();
    a.connect(1, sid("nowhere.test"), fd, WAIT).unwrap();
    match Events::new(&a).wait("connect_failed", |e| {
        matches!(e, Event::ConnectFailed { .. })
    }) {
        Event::ConnectFailed { reason, tried, .. } => {
            assert!(reason.ends_with("no route"), "{reason}");
            assert!(tried.is_empty());
        }
        _ => unreachable!(),
    }
}

#[test]
fn shutdown_resets_flows_and_joins() {
    let mut p = connected_pair("stop.test");
    p.a.shutdown();
    assert!(p.a.join(Duration::from_secs(5)));
    match Events::new(&p.b).wait("flow_closed", |e| matches!(e, Event::FlowClosed { .. })) {
        Event::FlowClosed { reason, .. } => assert_eq!(reason, "reset: aborted, by peer"),
        _ => unreachable!(),
    }
    let mut buf = [0u8; 1];
    assert_eq!(
        p.server.read(&mut buf).unwrap_or(0),
        0,
        "the app sees the end"
    );
    let (_app, fd) = app_pair();
    assert!(p.a.connect(1, sid("stop.test"), fd, WAIT).is_err());
}
