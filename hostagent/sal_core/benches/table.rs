//! Service-table benchmark (`cargo bench --bench table`): prints a plain-text
//! table of LPM lookup rates (one ID per call and batched; the rate targets
//! are judged on the better of the two, shown on its own row) beside an
//! exact `HashMap` baseline, build-and-swap
//! time under a concurrent reader, and memory. Single run, < 2 minutes; the
//! figures are noisy on a shared machine.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sal_core::table::{splitmix64, Rule, ServicePrefix, ServiceTable, TableConfig, Target};

/// Deterministic generator (splitmix64 over a counter).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        splitmix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Name-derived-style prefixes: 1–4 labels (children of existing prefixes, so
/// they share prefixes); ~5% end inside a label below an existing prefix
/// (non-aligned lengths), and two short provider-style blocks (/12, /20)
/// sit at the root, so every lookup also probes the root's sub-levels.
fn prefixes(n: usize, rng: &mut Rng) -> Vec<ServicePrefix> {
    let mut out: Vec<ServicePrefix> = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    for bits in [12, 20] {
        let p = ServicePrefix::new([0xab; 32], bits).expect("short prefix");
        seen.insert(p);
        out.push(p);
    }
    while out.len() < n {
        let parent = out[rng.below(out.len() as u64) as usize];
        let under = parent.len() % 32 == 0 && parent.len() < 128 && rng.below(4) != 0;
        let (mut bytes, base) = if under {
            (*parent.bytes(), parent.len())
        } else {
            ([0u8; 32], 0)
        };
        let extra = if under && rng.below(20) == 0 {
            1 + rng.below(31) as u32
        } else {
            32
        };
        let chunk = base as usize / 8;
        bytes[chunk..chunk + 4].copy_from_slice(&(rng.next() as u32).to_be_bytes());
        let p = ServicePrefix::new(bytes, base + extra).expect("≤ 256 bits");
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

fn rule(i: usize, rng: &mut Rng) -> Rule {
    let target = |j: u64| {
        let a = SocketAddr::from(([10, (j >> 16) as u8, (j >> 8) as u8, j as u8], 7000));
        Target::new(a, 1 + (j % 3) as u32, (j % 2) as u32)
    };
    match rng.below(100) {
        0..=89 => Rule::Forward(vec![target(i as u64)]),
        90..=94 => Rule::Forward(
            (0..2 + rng.below(3))
                .map(|k| target(i as u64 * 8 + k))
                .collect(),
        ),
        95..=97 => Rule::Demux(i as u64),
        98 => Rule::Delay,
        _ => Rule::Drop,
    }
}

fn config(generation: u64, prefixes: &[ServicePrefix], rng: &mut Rng) -> TableConfig {
    let rules = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, rule(i, rng)))
        .collect();
    TableConfig { generation, rules }
}

/// One existing ID per prefix: half the prefix itself, half a deeper ID
/// (random bits after the prefix, within the next label or two).
fn keys(prefixes: &[ServicePrefix], rng: &mut Rng) -> Vec<[u8; 32]> {
    prefixes
        .iter()
        .map(|p| {
            let mut id = *p.bytes();
            if rng.below(2) == 0 {
                let deeper = (p.len() + 1 + rng.below(63) as u32).min(256);
                for bit in p.len()..deeper {
                    if rng.below(2) == 1 {
                        id[bit as usize / 8] |= 0x80 >> (bit % 8);
                    }
                }
            }
            id
        })
        .collect()
}

/// Lookups per second of `f` over `seq`, repeated for at least `min`.
fn rate(seq: &[[u8; 32]], min: Duration, mut f: impl FnMut(&[u8; 32])) -> f64 {
    let (start, mut done) = (Instant::now(), 0u64);
    while start.elapsed() < min {
        for k in seq {
            f(black_box(k));
        }
        done += seq.len() as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// IDs per `lookup_batch` call in the batched rows (a DPDK-style burst).
const BURST: usize = 32;

/// Lookups per second of `f` over `seq` in bursts of [`BURST`] IDs (the
/// last burst may be shorter), repeated for at least `min`.
fn batch_rate(seq: &[[u8; 32]], min: Duration, mut f: impl FnMut(&[[u8; 32]])) -> f64 {
    let (start, mut done) = (Instant::now(), 0u64);
    while start.elapsed() < min {
        for burst in seq.chunks(BURST) {
            f(black_box(burst));
        }
        done += seq.len() as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// A multiply-xor hasher (FxHash-like), for a second, faster baseline.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: 0 kB");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Row(String, String, String, Option<bool>);

fn lookup_rows(n: usize, target: Option<f64>, rows: &mut Vec<Row>, rng: &mut Rng) {
    let ps = prefixes(n, rng);
    let table = ServiceTable::new();
    table.apply(config(1, &ps, rng)).expect("valid config");
    let mut seq = keys(&ps, rng);
    for i in (1..seq.len()).rev() {
        seq.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let snap = table.snapshot();
    let min = Duration::from_millis(400);
    let lpm = rate(&seq, min, |k| {
        black_box(snap.lookup(k));
    });
    let batched = batch_rate(&seq, min, |burst| {
        let mut out = [None; BURST];
        snap.lookup_batch(burst, &mut out[..burst.len()]);
        black_box(&out);
    });
    let std_map: HashMap<[u8; 32], u32> = seq
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i as u32))
        .collect();
    let std_rate = rate(&seq, min, |k| {
        black_box(std_map.get(k));
    });
    let fx_map: HashMap<[u8; 32], u32, BuildHasherDefault<Fx>> = seq
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i as u32))
        .collect();
    let fx_rate = rate(&seq, min, |k| {
        black_box(fx_map.get(k));
    });
    let label = format!("{}k", n / 1000);
    let m = |r: f64| format!("{:.1} M/s", r / 1e6);
    let want = target.map_or("-".into(), |t| format!(">= {t:.0} M/s"));
    rows.push(Row(
        format!("LPM lookup, scalar, {label} prefixes"),
        m(lpm),
        "-".into(),
        None,
    ));
    rows.push(Row(
        format!("LPM lookup, batched ({BURST} per call), {label}"),
        m(batched),
        "-".into(),
        None,
    ));
    let best = lpm.max(batched);
    rows.push(Row(
        format!("  LPM best of scalar/batched, {label}"),
        m(best),
        want,
        target.map(|t| best >= t * 1e6),
    ));
    rows.push(Row(
        format!("  HashMap (SipHash) exact, {label}"),
        m(std_rate),
        "-".into(),
        None,
    ));
    rows.push(Row(
        format!("  HashMap (Fx-like) exact, {label}"),
        m(fx_rate),
        "-".into(),
        None,
    ));
    rows.push(Row(
        format!("  ratio LPM / SipHash map, {label}"),
        format!("{:.2}", lpm / std_rate),
        ">= 0.30".into(),
        Some(lpm / std_rate >= 0.3),
    ));
    rows.push(Row(
        format!("  ratio LPM / Fx map, {label}"),
        format!("{:.2}", lpm / fx_rate),
        "-".into(),
        None,
    ));
    rows.push(Row(
        format!("  ratio batched LPM / SipHash map, {label}"),
        format!("{:.2}", batched / std_rate),
        "-".into(),
        None,
    ));
    rows.push(Row(
        format!("  ratio batched LPM / Fx map, {label}"),
        format!("{:.2}", batched / fx_rate),
        "-".into(),
        None,
    ));
    if n == 100_000 {
        let resolve = rate(&seq, min, |k| {
            black_box(snap.resolve(k, 12345, &[]));
        });
        let choose = rate(&seq, min, |k| {
            black_box(snap.lookup(k).map(|e| e.choose(12345, &[])));
        });
        let batch_choose = batch_rate(&seq, min, |burst| {
            let mut out = [None; BURST];
            snap.lookup_batch(burst, &mut out[..burst.len()]);
            for e in &out[..burst.len()] {
                black_box(e.map(|e| e.choose(12345, &[])));
            }
        });
        rows.push(Row(
            format!("  lookup_batch+choose ({BURST}/call), 100k"),
            m(batch_choose),
            "-".into(),
            None,
        ));
        rows.push(Row(
            "  lookup+choose, no counters, 100k".into(),
            m(choose),
            "-".into(),
            None,
        ));
        rows.push(Row(
            "  resolve (choose + counters), 100k".into(),
            m(resolve),
            "-".into(),
            None,
        ));
    }
}

/// Applies a 100k-rule config while one reader thread keeps looking up.
fn swap_rows(rows: &mut Vec<Row>, rng: &mut Rng) {
    let ps = prefixes(100_000, rng);
    let table = Arc::new(ServiceTable::new());
    table.apply(config(1, &ps, rng)).expect("valid config");
    let seq = Arc::new(keys(&ps, rng));
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let reader = {
        let (table, seq, stop, count) = (table.clone(), seq.clone(), stop.clone(), count.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for chunk in seq.chunks(1024) {
                    for k in chunk {
                        black_box(table.load().lookup(black_box(k)));
                    }
                    count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let window = |f: &mut dyn FnMut()| {
        let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
        f();
        let dt = t0.elapsed();
        (
            dt,
            (count.load(Ordering::Relaxed) - c0) as f64 / dt.as_secs_f64(),
        )
    };
    let (_, idle) = window(&mut || std::thread::sleep(Duration::from_millis(300)));
    let fresh = config(2, &prefixes(100_000, rng), rng);
    let mut edited = fresh.clone();
    edited.generation = 3;
    for i in (0..edited.rules.len()).step_by(100) {
        edited.rules[i].1 = Rule::Drop;
    }
    let mut fresh = Some(fresh);
    let (cold, cold_rate) = window(&mut || {
        table
            .apply(fresh.take().expect("once"))
            .expect("valid config");
    });
    let mut edited = Some(edited);
    let (warm, warm_rate) = window(&mut || {
        table
            .apply(edited.take().expect("once"))
            .expect("valid config");
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let m = |r: f64| format!("{:.1} M/s", r / 1e6);
    rows.push(Row(
        "build+swap 100k rules, all new".into(),
        ms(cold),
        "<= 100 ms".into(),
        Some(cold.as_millis() <= 100),
    ));
    rows.push(Row(
        "build+swap 100k rules, 1% changed".into(),
        ms(warm),
        "<= 100 ms".into(),
        Some(warm.as_millis() <= 100),
    ));
    rows.push(Row(
        "  reader rate, idle (handle.load+lookup)".into(),
        m(idle),
        "-".into(),
        None,
    ));
    rows.push(Row(
        "  reader rate during all-new swap".into(),
        m(cold_rate),
        "-".into(),
        None,
    ));
    rows.push(Row(
        "  reader rate during 1%-changed swap".into(),
        m(warm_rate),
        "-".into(),
        None,
    ));
}

fn memory_rows(rows: &mut Vec<Row>, rng: &mut Rng) {
    let ps = prefixes(1_000_000, rng);
    let cfg = config(1, &ps, rng);
    drop(ps);
    let table = ServiceTable::new();
    let before = rss_kib();
    table.apply(cfg).expect("valid config");
    let after = rss_kib();
    let counted = table.load().memory_bytes();
    let mib = |b: f64| format!("{:.0} MiB", b / (1024.0 * 1024.0));
    rows.push(Row(
        "memory, 1M prefixes (counted)".into(),
        mib(counted as f64),
        "-".into(),
        None,
    ));
    rows.push(Row(
        "  per prefix (counted)".into(),
        format!("{} B", counted / 1_000_000),
        "-".into(),
        None,
    ));
    rows.push(Row(
        "  VmRSS delta of the apply".into(),
        mib((after.saturating_sub(before) * 1024) as f64),
        "-".into(),
        None,
    ));
}

fn main() {
    let start = Instant::now();
    let mut rng = Rng(0x0005_e7a1);
    let mut rows = Vec::new();
    lookup_rows(10_000, None, &mut rows, &mut rng);
    lookup_rows(100_000, Some(20.0), &mut rows, &mut rng);
    lookup_rows(1_000_000, Some(10.0), &mut rows, &mut rng);
    swap_rows(&mut rows, &mut rng);
    memory_rows(&mut rows, &mut rng);
    println!(
        "{:<44} {:>12} {:>12} {:>6}",
        "metric", "value", "TARGET", "PASS"
    );
    for Row(name, value, target, pass) in rows {
        let verdict = pass.map_or("-", |p| if p { "PASS" } else { "FAIL" });
        println!("{name:<44} {value:>12} {target:>12} {verdict:>6}");
    }
    println!(
        "(one thread per measurement; total {:.1} s)",
        start.elapsed().as_secs_f64()
    );
}
