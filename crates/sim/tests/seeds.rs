//! The membership core under the deterministic simulator, over many seeds. Each test
//! prints its figures; a failure names the seed and how to replay it.
//! `TANDEM_SIM_SEEDS=N` runs N seeds per scenario instead of the quick default.

use std::time::Duration;

use tandem_sim::{
    Aggregate, all_links_cut_then_heal, one_link_cut, random_faults, restart_reported, run_seeds,
};

fn report(name: &str, agg: &Aggregate) {
    let t = &agg.total;
    let mut lat: Vec<Duration> = t.dead_latencies.clone();
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .map(|d| format!("{:?}", d))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{name}: {} seeds, {} packets sent ({} lost, {} duplicated), {} accepted, {} dropped, \
         {} forgeries refused, {} dead verdicts (beyond deadtime after the last packet: p50 {} max {}), \
         {} returned, {} restarted, {} messages delivered, {} acked, \
         {} messages/acks seen by another node on a shared medium",
        agg.seeds,
        t.packets_sent,
        t.packets_lost,
        t.packets_duplicated,
        t.packets_accepted,
        t.packets_dropped,
        t.forgeries,
        t.dead_verdicts,
        pct(0.5),
        pct(1.0),
        t.returned,
        t.restarted,
        t.messages_delivered,
        t.messages_acked,
        t.other_destination,
    );
}

fn run(name: &str, quick: u64, f: fn(u64) -> Result<tandem_sim::Summary, String>) {
    match run_seeds(name, quick, f) {
        Ok(agg) => report(name, &agg),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn random_faults_keep_every_invariant() {
    run("random_faults", 500, random_faults);
}

#[test]
fn one_link_cut_never_declares_dead() {
    run("one_link_cut", 150, one_link_cut);
}

#[test]
fn all_links_cut_declares_dead_in_bounds_and_heal_reports_return() {
    run("all_links_cut", 150, all_links_cut_then_heal);
}

#[test]
fn restart_is_reported_as_restart() {
    run("restart", 150, restart_reported);
}

#[test]
fn same_seed_replays_the_same_run() {
    for seed in [3, 77] {
        assert_eq!(random_faults(seed), random_faults(seed));
    }
    assert_ne!(random_faults(3), random_faults(4));
}
