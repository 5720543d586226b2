//! Readers on several threads while the main thread applies new generations:
//! every version a reader sees is whole (all rules from one generation) and
//! generations never go backwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use sal_core::table::{Rule, ServicePrefix, ServiceTable, TableConfig, Verdict};

/// Generation `g`: `2 + g % 7` prefixes, every one DEMUX to listener `g`.
fn config(g: u64) -> TableConfig {
    let rules = (0..2 + g % 7)
        .map(|i| {
            let mut bytes = [0u8; 32];
            bytes[0] = i as u8;
            (
                ServicePrefix::new(bytes, 8 + (i as u32 % 3) * 40).unwrap(),
                Rule::Demux(g),
            )
        })
        .collect();
    TableConfig {
        generation: g,
        rules,
    }
}

#[test]
fn readers_never_see_a_torn_table() {
    let table = Arc::new(ServiceTable::new());
    table.apply(config(1)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
            thread::spawn(move || {
                let (mut last, mut reads) = (0, 0u64);
                while !stop.load(Ordering::Relaxed) || reads < 1000 {
                    let version = table.load();
                    let g = version.generation();
                    assert!(g >= last, "generation went back from {last} to {g}");
                    assert_eq!(version.len() as u64, 2 + g % 7, "generation {g}");
                    for i in 0..version.len() {
                        let mut id = [0u8; 32];
                        id[0] = i as u8;
                        assert_eq!(version.resolve(&id, 0, &[]), Verdict::Demux(g));
                    }
                    last = g;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for g in 2..=400 {
        table.apply(config(g)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().expect("reader panicked") >= 1000);
    }
    assert_eq!(table.generation(), 400);
}
