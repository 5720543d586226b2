//! Pure decisions of the data path: set-up failure reports, reconnection
//! targets, timing and source addresses, advertised endpoints. No I/O, no
//! clock; randomness is passed in.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::{RstReason, MAX_ADDRESSES};

/// Text of an RST reason, as used in events.
pub fn rst_text(r: RstReason) -> String {
    match r {
        RstReason::Unspecified => "unspecified".into(),
        RstReason::NoService => "no service".into(),
        RstReason::Refused => "refused".into(),
        RstReason::Timeout => "timeout".into(),
        RstReason::ProtocolError => "protocol error".into(),
        RstReason::Aborted => "aborted".into(),
        RstReason::Resources => "out of resources".into(),
        RstReason::Other(c) => format!("other ({c})"),
    }
}

/// `FlowClosed` reason of a reset: `timeout` for our own give-up, else
/// `reset: <reason>` (`, by peer` when the peer sent the RST).
pub fn reset_text(reason: RstReason, remote: bool) -> String {
    match (reason, remote) {
        (RstReason::Timeout, false) => "timeout".into(),
        (r, true) => format!("reset: {}, by peer", rst_text(r)),
        (r, false) => format!("reset: {}", rst_text(r)),
    }
}

/// The `ConnectFailed` reason: names the service ID and what was tried.
pub fn connect_failure(service_hex: &str, what: &str, tried: &[(SocketAddr, String)]) -> String {
    let mut s = format!("service {service_hex}: {what}");
    if !tried.is_empty() {
        let list: Vec<String> = tried
            .iter()
            .map(|(a, why)| format!("{a} ({why})"))
            .collect();
        s.push_str("; tried ");
        s.push_str(&list.join(", "));
    }
    s
}

/// Where a flow whose path broke reconnects to, in order of preference:
/// the endpoint it last used (initiator: the chosen target), then the
/// peer's advertised endpoints; deduplicated, unspecified addresses skipped.
pub fn reconnect_targets(known: Option<SocketAddr>, advertised: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in known.into_iter().chain(advertised.iter().copied()) {
        if !a.ip().is_unspecified() && a.port() != 0 && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Delay before the first reconnection attempt. The initiator goes first;
/// the acceptor waits `acceptor_wait_ms` so that usually only one new
/// connection is made (both sides trying is harmless, just wasteful).
/// `jitter` is a random value; the result adds up to `base_ms` of jitter.
pub fn first_reconnect_delay(
    initiator: bool,
    acceptor_wait_ms: u64,
    base_ms: u64,
    jitter: u64,
) -> u64 {
    let j = jitter % (base_ms + 1);
    if initiator {
        j
    } else {
        acceptor_wait_ms + j
    }
}

/// Delay after failed attempt number `attempt` (0-based): exponential from
/// `initial_ms`, capped at `max_ms`, jittered to 50–100 % of that.
pub fn backoff_ms(attempt: u32, initial_ms: u64, max_ms: u64, jitter: u64) -> u64 {
    let full = initial_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(max_ms)
        .max(1);
    full / 2 + jitter % (full / 2 + 1)
}

/// Source address for a new connection to `target`, among the host's
/// usable addresses `local` (removed ones are not in it): `kernel`, the
/// address the kernel's route lookup chose for `target`, if it is usable;
/// else the usable address of the same family and scope (loopback for
/// loopback targets) sharing the longest prefix with `target` (on a
/// multi-homed host, the one on the target's network, so that the answer
/// comes back over the path the connection leaves by); `None` lets the
/// kernel choose (no such address known).
pub fn choose_source(
    local: &BTreeSet<IpAddr>,
    target: SocketAddr,
    kernel: Option<IpAddr>,
) -> Option<IpAddr> {
    let t = target.ip();
    if let Some(k) = kernel.filter(|k| local.contains(k)) {
        return Some(k);
    }
    local
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified())
        .filter(|ip| ip.is_ipv4() == t.is_ipv4() && ip.is_loopback() == t.is_loopback())
        .max_by_key(|ip| (common_prefix_bits(*ip, t), std::cmp::Reverse(*ip)))
}

/// Leading bits two addresses of the same family share (0 across families).
fn common_prefix_bits(a: IpAddr, b: IpAddr) -> u32 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => 0,
    }
}

/// The SAL endpoints to advertise: each bound address, or for a wildcard
/// bind each known local address of its family with the bound port;
/// deduplicated, at most [`MAX_ADDRESSES`].
pub fn advertised_endpoints(bound: &[SocketAddr], local: &BTreeSet<IpAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for b in bound {
        if b.ip().is_unspecified() {
            for ip in local.iter().filter(|ip| ip.is_ipv4() == b.is_ipv4()) {
                out.push(SocketAddr::new(*ip, b.port()));
            }
        } else {
            out.push(*b);
        }
    }
    let mut seen = Vec::new();
    out.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    out.truncate(MAX_ADDRESSES);
    out
}

/// Our own SAL endpoint for a local (DEMUX) set-up: the first bound
/// address, with a wildcard replaced by loopback of its family.
pub fn loopback_endpoint(bound: &[SocketAddr]) -> Option<SocketAddr> {
    let b = *bound.first()?;
    let ip = match b.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(SocketAddr::new(ip, b.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn failure_reason_names_service_and_tries() {
        let tried = vec![
            (a("10.0.0.5:7946"), "refused".to_string()),
            (a("10.0.0.6:7946"), "no service".to_string()),
        ];
        assert_eq!(
            connect_failure("ab12", "no target reachable", &tried),
            "service ab12: no target reachable; tried 10.0.0.5:7946 (refused), 10.0.0.6:7946 (no service)"
        );
        assert_eq!(
            connect_failure("ab12", "no route", &[]),
            "service ab12: no route"
        );
    }

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(RstReason::Timeout, false), "timeout");
        assert_eq!(
            reset_text(RstReason::Aborted, true),
            "reset: aborted, by peer"
        );
        assert_eq!(reset_text(RstReason::Other(77), false), "reset: other (77)");
    }

    #[test]
    fn reconnect_targets_prefer_known_then_advertised() {
        let got = reconnect_targets(
            Some(a("10.0.0.1:9")),
            &[
                a("10.0.0.2:9"),
                a("10.0.0.1:9"),
                a("0.0.0.0:9"),
                a("10.0.0.3:0"),
            ],
        );
        assert_eq!(got, vec![a("10.0.0.1:9"), a("10.0.0.2:9")]);
        assert!(reconnect_targets(None, &[]).is_empty());
    }

    #[test]
    fn timing_is_bounded_and_initiator_first() {
        for j in [0, 1, 7, u64::MAX] {
            assert!(first_reconnect_delay(true, 300, 50, j) <= 50);
            let d = first_reconnect_delay(false, 300, 50, j);
            assert!((300..=350).contains(&d));
            for attempt in 0..40 {
                let b = backoff_ms(attempt, 50, 1000, j);
                let full = (50u64 << attempt.min(20)).min(1000);
                assert!(b >= full / 2 && b <= full, "{attempt} {b}");
            }
        }
    }

    #[test]
    fn source_matches_family_and_scope_and_the_targets_network() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = ips(&["127.0.0.1", "127.0.0.2", "10.1.1.1", "10.2.2.5", "::1"]);
        let lo = a("127.0.0.1:5");
        assert_eq!(choose_source(&local, lo, None), Some(ip("127.0.0.1")));
        // multi-homed: the address on the target's network, whatever their order
        assert_eq!(
            choose_source(&local, a("10.2.2.3:5"), None),
            Some(ip("10.2.2.5"))
        );
        assert_eq!(
            choose_source(&local, a("10.1.1.9:5"), None),
            Some(ip("10.1.1.1"))
        );
        // the kernel's route choice wins when usable, not when removed (not in `local`)
        assert_eq!(
            choose_source(&local, a("10.1.1.9:5"), Some(ip("10.2.2.5"))),
            Some(ip("10.2.2.5"))
        );
        assert_eq!(
            choose_source(&local, a("10.1.1.9:5"), Some(ip("10.3.3.3"))),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(choose_source(&local, a("[2001:db8::1]:5"), None), None);
        assert_eq!(choose_source(&BTreeSet::new(), lo, None), None);
    }

    #[test]
    fn advertised_endpoints_expand_wildcards() {
        let local = ips(&["10.0.0.1", "10.0.0.2", "::1"]);
        assert_eq!(
            advertised_endpoints(&[a("0.0.0.0:7946"), a("10.0.0.1:7946")], &local),
            vec![a("10.0.0.1:7946"), a("10.0.0.2:7946")]
        );
        assert_eq!(
            advertised_endpoints(&[a("[::]:1")], &local),
            vec![a("[::1]:1")]
        );
        assert_eq!(loopback_endpoint(&[a("0.0.0.0:7")]), Some(a("127.0.0.1:7")));
        assert_eq!(loopback_endpoint(&[a("10.0.0.1:7")]), Some(a("10.0.0.1:7")));
        assert_eq!(loopback_endpoint(&[]), None);
    }
}
