//! Runs one membership scenario over a range of seeds from the command line, e.g. to
//! replay a failing seed with its trace:
//!
//! ```text
//! cargo run -p tandem-sim --example membership_sim -- random_faults 1234
//! cargo run -p tandem-sim --example membership_sim -- one_link_cut 0 1000
//! ```

use std::process::ExitCode;

use tandem_sim::{all_links_cut_then_heal, one_link_cut, random_faults, restart_reported};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario: fn(u64) -> Result<tandem_sim::Summary, String> = match args
        .first()
        .map(String::as_str)
    {
        Some("random_faults") => random_faults,
        Some("one_link_cut") => one_link_cut,
        Some("all_links_cut") => all_links_cut_then_heal,
        Some("restart") => restart_reported,
        _ => {
            eprintln!(
                "usage: membership_sim random_faults|one_link_cut|all_links_cut|restart FIRST_SEED [END_SEED]"
            );
            return ExitCode::from(2);
        }
    };
    let Some(first) = args.get(1).and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("FIRST_SEED must be a number");
        return ExitCode::from(2);
    };
    let end = args
        .get(2)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(first + 1);
    for seed in first..end {
        match scenario(seed) {
            Ok(s) => println!(
                "seed {seed}: ok: {} packets ({} lost, {} duplicated), {} forgeries refused, {} dead, {} returned, {} restarted, {} messages delivered",
                s.packets_sent,
                s.packets_lost,
                s.packets_duplicated,
                s.forgeries,
                s.dead_verdicts,
                s.returned,
                s.restarted,
                s.messages_delivered
            ),
            Err(e) => {
                println!("seed {seed}: FAILED: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
