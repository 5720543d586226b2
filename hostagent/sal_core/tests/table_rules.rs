//! Table-driven unit tests of the service table's public contract.

use std::net::SocketAddr;

use sal_core::service_id::service_id;
use sal_core::table::{
    ApplyOutcome, DelayQueue, DelayVerdict, Rule, RuleKind, ServicePrefix, ServiceTable,
    TableConfig, TableError, Target, Verdict, DEFAULT_DELAY_LIMIT,
};

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8080))
}

fn p(text: &str) -> ServicePrefix {
    ServicePrefix::parse(text).unwrap()
}

fn id(hex: &str) -> [u8; 32] {
    *ServicePrefix::parse(hex).unwrap().bytes()
}

fn fwd(targets: &[(u8, u32, u32)]) -> Rule {
    Rule::Forward(
        targets
            .iter()
            .map(|&(a, w, t)| Target::new(addr(a), w, t))
            .collect(),
    )
}

fn table(generation: u64, rules: Vec<(ServicePrefix, Rule)>) -> ServiceTable {
    let t = ServiceTable::new();
    t.apply(TableConfig { generation, rules }).unwrap();
    t
}

#[test]
fn each_rule_kind_gives_its_verdict() {
    let t = table(
        1,
        vec![
            (p("aa:8"), fwd(&[(1, 1, 0)])),
            (p("bb:8"), Rule::Demux(42)),
            (p("cc:8"), Rule::Delay),
            (p("dd:8"), Rule::Drop),
        ],
    );
    let cases = [
        ("aa01", Verdict::Forward(Target::new(addr(1), 1, 0))),
        ("bb01", Verdict::Demux(42)),
        ("cc01", Verdict::Delay),
        ("dd01", Verdict::Drop),
        ("ee01", Verdict::NoRoute),
    ];
    for (hex, want) in cases {
        assert_eq!(t.resolve(&id(hex), 7, &[]), want, "{hex}");
    }
}

#[test]
fn bit_granular_prefixes_pick_the_longest_match() {
    let rules: Vec<(ServicePrefix, Rule)> = [0u32, 1, 7, 33, 255, 256]
        .iter()
        .map(|&bits| {
            (
                ServicePrefix::new([0xff; 32], bits).unwrap(),
                Rule::Demux(bits.into()),
            )
        })
        .collect();
    let t = table(1, rules);
    let flip = |bit: usize| {
        let mut b = [0xffu8; 32];
        b[bit / 8] ^= 0x80 >> (bit % 8);
        b
    };
    let cases = [
        ([0xff; 32], 256),
        (flip(255), 255),
        (flip(254), 33),
        (flip(33), 33),
        (flip(32), 7),
        (flip(7), 7),
        (flip(6), 1),
        (flip(1), 1),
        (flip(0), 0),
    ];
    for (key, want) in cases {
        assert_eq!(t.resolve(&key, 0, &[]), Verdict::Demux(want), "{key:02x?}");
    }
    assert_eq!(
        t.load().get(&p("fe:7")).map(|e| e.kind()),
        Some(RuleKind::Demux)
    );
    assert!(t.load().get(&p("fe:8")).is_none());
}

#[test]
fn name_derived_prefixes_match_children() {
    let acme = ServicePrefix::from(service_id("acme").unwrap());
    let prod = ServicePrefix::from(service_id("prod.acme").unwrap());
    let t = table(1, vec![(acme, Rule::Demux(1)), (prod, Rule::Demux(2))]);
    let cases = [
        ("acme", 1),
        ("www.acme", 1),
        ("prod.acme", 2),
        ("db.prod.acme", 2),
    ];
    for (name, want) in cases {
        let key = service_id(name).unwrap().bytes;
        assert_eq!(t.resolve(&key, 0, &[]), Verdict::Demux(want), "{name}");
    }
    let other = service_id("acme.org").unwrap().bytes;
    assert_eq!(t.resolve(&other, 0, &[]), Verdict::NoRoute);
}

/// (targets as (address, weight, tier), excluded addresses, expected address)
type FailoverCase = (&'static [(u8, u32, u32)], &'static [u8], Option<u8>);

#[test]
fn lower_tier_wins_and_higher_tiers_are_failover() {
    let cases: [FailoverCase; 6] = [
        (&[(1, 1, 2), (2, 1, 1)], &[], Some(2)),
        (&[(1, 1, 0), (2, 1, 1)], &[1], Some(2)),
        (&[(1, 0, 0), (2, 5, 1)], &[], Some(2)), // weight 0 tier counts as empty
        (&[(1, 0, 0), (2, 0, 1)], &[], None),    // everything drained
        (&[(1, 1, 0), (2, 1, 1)], &[1, 2], None),
        (&[(1, 1, 0), (2, 1, 0), (3, 1, 1)], &[1], Some(2)),
    ];
    for (targets, exclude, want) in cases {
        let t = table(1, vec![(p("aa:8"), fwd(targets))]);
        let ex: Vec<SocketAddr> = exclude.iter().map(|&a| addr(a)).collect();
        for key in 0..50u64 {
            let got = match t.resolve(&id("aa"), key, &ex) {
                Verdict::Forward(target) => Some(target.addr),
                Verdict::NoTarget => None,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, want.map(addr), "{targets:?} excluding {exclude:?}");
        }
    }
}

#[test]
fn exclusion_is_deterministic_and_spreads_load() {
    let t = table(
        1,
        vec![(
            p("aa:8"),
            fwd(&[(1, 1, 0), (2, 1, 0), (3, 1, 0), (4, 1, 0)]),
        )],
    );
    let snap = t.snapshot();
    let entry = snap.lookup(&id("aa")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for key in 0..2000u64 {
        let first = entry.choose(key, &[]);
        let Verdict::Forward(failed) = first else {
            panic!()
        };
        let next = entry.choose(key, &[failed.addr]);
        assert_eq!(next, entry.choose(key, &[failed.addr]));
        let Verdict::Forward(next) = next else {
            panic!()
        };
        assert_ne!(next.addr, failed.addr);
        seen.insert(next.addr);
    }
    assert_eq!(seen.len(), 4, "failover spreads over all remaining targets");
}

#[test]
fn all_targets_returns_the_best_tier() {
    let t = table(
        1,
        vec![(
            p("aa:8"),
            fwd(&[(1, 1, 1), (2, 1, 1), (3, 0, 1), (4, 1, 2)]),
        )],
    );
    let snap = t.snapshot();
    let all: Vec<SocketAddr> = snap
        .lookup(&id("aa"))
        .unwrap()
        .all_targets()
        .iter()
        .map(|t| t.addr)
        .collect();
    assert_eq!(all, vec![addr(1), addr(2)]);
}

#[test]
fn invalid_configs_are_typed_errors() {
    let aa = p("aa:8");
    let cases: Vec<(Vec<(ServicePrefix, Rule)>, TableError)> = vec![
        (
            vec![(aa, fwd(&[(1, 1, 0), (1, 2, 1)]))],
            TableError::DuplicateTarget(aa, addr(1)),
        ),
        (vec![(aa, Rule::Forward(vec![]))], TableError::NoTargets(aa)),
        (
            vec![(aa, Rule::Drop), (p("aaff:8"), Rule::Delay)],
            TableError::DuplicatePrefix(aa),
        ),
    ];
    for (rules, want) in cases {
        let t = ServiceTable::new();
        assert_eq!(
            t.apply(TableConfig {
                generation: 1,
                rules
            }),
            Err(want.clone())
        );
        assert_eq!(t.generation(), 0, "a refused config leaves the table alone");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn rule_from_parts_checks_kind_fields() {
    let target = vec![Target::new(addr(1), 1, 0)];
    let cases = [
        (
            RuleKind::Drop,
            target.clone(),
            None,
            Err(TableError::TargetsNotAllowed("drop")),
        ),
        (
            RuleKind::Delay,
            vec![],
            Some(3),
            Err(TableError::ListenerNotAllowed("delay")),
        ),
        (
            RuleKind::Demux,
            vec![],
            None,
            Err(TableError::MissingListener),
        ),
        (RuleKind::Demux, vec![], Some(3), Ok(Rule::Demux(3))),
        (
            RuleKind::Forward,
            target.clone(),
            None,
            Ok(Rule::Forward(target.clone())),
        ),
    ];
    for (kind, targets, listener, want) in cases {
        assert_eq!(Rule::from_parts(kind, targets, listener), want, "{kind:?}");
    }
    assert_eq!(RuleKind::parse("FORWARD"), Ok(RuleKind::Forward));
    assert!(matches!(
        RuleKind::parse("nat"),
        Err(TableError::UnknownRuleKind(_))
    ));
}

#[test]
fn apply_reports_no_change_stale_generation_and_diffs() {
    let t = ServiceTable::new();
    let v1 = vec![
        (p("aa:8"), fwd(&[(1, 1, 0), (2, 1, 0)])),
        (p("bb:8"), Rule::Drop),
    ];
    let s = t
        .apply(TableConfig {
            generation: 5,
            rules: v1.clone(),
        })
        .unwrap();
    assert_eq!(
        (s.outcome, s.added, s.removed, s.changed),
        (ApplyOutcome::Applied, 2, 0, 0)
    );
    // Same content, other order, targets reordered: no change at any generation.
    let reordered = vec![
        (p("bb:8"), Rule::Drop),
        (p("aa:8"), fwd(&[(2, 1, 0), (1, 1, 0)])),
    ];
    for generation in [3, 5] {
        let s = t
            .apply(TableConfig {
                generation,
                rules: reordered.clone(),
            })
            .unwrap();
        assert_eq!((s.outcome, s.generation), (ApplyOutcome::NoChange, 5));
    }
    let s = t
        .apply(TableConfig {
            generation: 6,
            rules: reordered,
        })
        .unwrap();
    assert_eq!(
        (s.outcome, s.generation, t.generation()),
        (ApplyOutcome::NoChange, 6, 6)
    );
    let v2 = vec![(p("aa:8"), fwd(&[(1, 1, 0)])), (p("cc:8"), Rule::Delay)];
    assert_eq!(
        t.apply(TableConfig {
            generation: 6,
            rules: v2.clone()
        }),
        Err(TableError::StaleGeneration {
            current: 6,
            offered: 6
        })
    );
    let s = t
        .apply(TableConfig {
            generation: 7,
            rules: v2,
        })
        .unwrap();
    assert_eq!((s.added, s.removed, s.changed, s.generation), (1, 1, 1, 7));
}

#[test]
fn counters_survive_reapply_for_kept_prefixes_and_targets() {
    let t = table(
        1,
        vec![(p("aa:8"), fwd(&[(1, 1, 0)])), (p("bb:8"), Rule::Drop)],
    );
    for key in 0..10 {
        t.resolve(&id("aa"), key, &[]);
    }
    t.resolve(&id("bb"), 0, &[]);
    t.resolve(&id("ee"), 0, &[]);
    // Change the aa rule (add a target), keep bb, add cc.
    let v2 = vec![
        (p("aa:8"), fwd(&[(1, 1, 0), (2, 1, 1)])),
        (p("bb:8"), Rule::Drop),
        (p("cc:8"), Rule::Delay),
    ];
    t.apply(TableConfig {
        generation: 2,
        rules: v2,
    })
    .unwrap();
    t.resolve(&id("cc"), 0, &[]);
    let c = t.counters();
    assert_eq!((c.generation, c.no_route), (2, 1));
    let hits: Vec<(String, u64)> = c
        .rules
        .iter()
        .map(|r| (r.prefix.to_string(), r.hits))
        .collect();
    assert_eq!(
        hits,
        vec![("aa:8".into(), 10), ("bb:8".into(), 1), ("cc:8".into(), 1)]
    );
    let chosen: Vec<u64> = c.rules[0].targets.iter().map(|t| t.chosen).collect();
    assert_eq!(chosen, vec![10, 0]);
}

#[test]
fn bumps_on_an_old_version_carry_over_only_for_counters_in_use_at_the_build() {
    let rules = || vec![(p("aa:8"), Rule::Drop), (p("bb:8"), Rule::Drop)];
    let t = table(1, rules());
    t.resolve(&id("aa"), 0, &[]);
    let old = t.snapshot();
    t.apply(TableConfig {
        generation: 2,
        rules: [rules(), vec![(p("cc:8"), Rule::Delay)]].concat(),
    })
    .unwrap();
    // A reader still on the old version: aa's counter was in use, so the new
    // version shares it; bb's counter is allocated by this first bump, after
    // the build, so the new version never sees it (the documented window).
    old.resolve(&id("aa"), 0, &[]);
    old.resolve(&id("bb"), 0, &[]);
    let hits: Vec<u64> = t.counters().rules.iter().map(|r| r.hits).collect();
    assert_eq!(hits, vec![2, 0, 0]);
    assert_eq!(old.counters().rules[1].hits, 1);
}

#[test]
fn delay_queue_is_bounded_and_settles() {
    assert_eq!(DelayQueue::<u8>::default().limit(), DEFAULT_DELAY_LIMIT);
    assert_eq!(
        DelayQueue::<u8>::with_limit(0).unwrap_err(),
        TableError::ZeroDelayLimit
    );
    let mut q = DelayQueue::with_limit(3).unwrap();
    let (a, b) = (id("aa"), id("bb"));
    let t0 = q.push(a, "syn0").unwrap();
    let t1 = q.push(b, "syn1").unwrap();
    q.push(a, "syn2").unwrap();
    assert_eq!(q.push(b, "syn3"), Err(TableError::DelayQueueFull(3)));
    assert_eq!(q.oldest(), Some((t0, &a)));
    assert_eq!(q.settle(t1, DelayVerdict::Drop), Ok(None));
    assert_eq!(
        q.settle(t1, DelayVerdict::Drop),
        Err(TableError::UnknownTicket(t1))
    );
    assert_eq!(
        q.settle_service(&a, DelayVerdict::Release),
        (vec!["syn0", "syn2"], 2)
    );
    assert!(q.is_empty());
    q.push(b, "syn4").unwrap();
    assert_eq!(q.settle_service(&b, DelayVerdict::Drop), (vec![], 1));
}
