//! A thin layer over criterion shared by the micro-benchmarks.
//!
//! Each benchmark is a named routine with a throughput. Under `cargo bench`
//! (the process gets `--bench`) they run through criterion with its usual
//! command line (filters, `--save-baseline`, ...). Without `--bench`, as under
//! `cargo test --all-targets`, each routine runs exactly once and criterion's
//! argument parser is not involved at all: it rejects libtest flags such as
//! `--test-threads=2`, which `scripts/test.sh` passes to every target.

use std::time::Duration;

use criterion::{Criterion, Throughput};

/// One benchmark: `group/name`, measured as `throughput` per call.
pub struct Bench {
    pub group: &'static str,
    pub name: String,
    pub throughput: Throughput,
    pub routine: Box<dyn FnMut()>,
}

impl Bench {
    pub fn new(
        group: &'static str,
        name: impl Into<String>,
        throughput: Throughput,
        routine: impl FnMut() + 'static,
    ) -> Self {
        Self {
            group,
            name: name.into(),
            throughput,
            routine: Box::new(routine),
        }
    }
}

/// Whether the process was started by `cargo bench` (which passes `--bench`).
pub fn bench_mode() -> bool {
    std::env::args().skip(1).any(|a| a == "--bench")
}

/// Run `benches` under criterion (`cargo bench`) or once each (tests).
pub fn run(target: &str, benches: Vec<Bench>) {
    if !bench_mode() {
        let n = benches.len();
        for mut b in benches {
            (b.routine)();
        }
        println!("{target}: {n} benchmarks ran once (measure with cargo bench --bench {target})");
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    let mut groups: Vec<&'static str> = benches.iter().map(|b| b.group).collect();
    groups.dedup();
    let mut benches: Vec<Option<Bench>> = benches.into_iter().map(Some).collect();
    for g in groups {
        let mut group = c.benchmark_group(g);
        for slot in benches.iter_mut() {
            if slot.as_ref().is_some_and(|b| b.group == g) {
                let mut b = slot.take().expect("present");
                group.throughput(b.throughput.clone());
                group.bench_function(b.name.as_str(), |bencher| bencher.iter(&mut b.routine));
            }
        }
        group.finish();
    }
    c.final_summary();
}
