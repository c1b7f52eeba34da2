//! The whole-cluster simulator over many seeds (see `tandem_sim::cluster`): no seed may
//! break an invariant, the faults must really happen, and each unsafe variant must be
//! caught within a bounded number of seeds — proof that the checks can fail.
//!
//! `TANDEM_SIM_SEEDS=N` runs more seeds; `cargo run --release -p tandem-sim --bin
//! cluster-sim -- --seeds N` is the faster way to run thousands.

use tandem_sim::cluster::{Options, Unsafe, run_seed};

fn seeds(default: u64) -> u64 {
    std::env::var("TANDEM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn no_seed_breaks_an_invariant_and_every_run_converges() {
    let n = seeds(60);
    let opts = Options::default();
    let (mut fences, mut promotions, mut writes) = (0, 0, 0);
    let (mut with_witness, mut grants, mut takeovers) = (0, 0, 0);
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 0..n {
        let s = run_seed(seed, &opts).unwrap_or_else(|e| panic!("{e}"));
        fences += s.fences;
        promotions += s.promotions;
        writes += s.writes_acked;
        with_witness += u64::from(s.witness);
        grants += s.grants;
        takeovers += s.witness_takeovers;
        kinds.extend(s.faults.keys().copied());
    }
    eprintln!(
        "{n} seeds: {fences} fences, {promotions} promotions, {writes} acknowledged writes, fault kinds {kinds:?}"
    );
    assert!(fences > n, "fences: {fences}");
    assert!(promotions > n * 2, "promotions: {promotions}");
    assert!(writes > n * 500, "writes: {writes}");
    // Odd seeds run with a witness: it is asked, it grants, and nodes take over with it.
    assert_eq!(with_witness, n / 2);
    assert!(grants > n / 2, "grants: {grants}");
    assert!(takeovers > n / 4, "takeovers with a witness: {takeovers}");
    for kind in [
        "power-off",
        "freeze",
        "cut-hb",
        "cut-lan",
        "cut-all",
        "clock-jump",
        "switch-broken",
        "operator-request",
        "clean-stop",
        "witness-power-off",
        "cut-witness",
        "isolate-node",
        "partition-witness-one-side",
    ] {
        assert!(kinds.contains(kind), "no {kind} fault in {n} seeds");
    }
}

/// Seeds that once broke an invariant, each a fault sequence a fix is owed to (the
/// trace: `cargo run --release -p tandem-sim --bin cluster-sim -- --seed N`):
/// - 88, 122, 161, 186, 240, 344, 379, 393, 1987: acknowledged writes lost after a
///   crash of a just-promoted or just-demoted primary (fixed: a demote and a clean stop
///   close the epoch; a leaving secondary with unconfirmed writes is not outdated);
/// - 1904: a crashed primary, its cache short of acknowledged writes, chosen as resync
///   source over a peer that had stopped cleanly (fixed: equal generations mean the
///   survivor holds every acknowledged write; news of the peer's outdating heard after
///   the crash does not let the crashed copy be promoted alone);
/// - 2874: both nodes started the group when their own start failures expired at the
///   same moment, each still holding the other's as last reported (fixed: claims);
/// - 3646, 4136, 4810: part of the group still running after the calm phase (gone with
///   claims; the starts these seeds raced are now granted one at a time);
/// - 1249: a node waited for ever for the report of a peer back from a partition the
///   peer never saw (it was frozen) (fixed: `AskReport`);
/// - 4401: a primary demoted while its peer had writes acknowledged under protocol C
///   only in its cache; the peer lost power, both met with equal generations and no
///   resync (fixed: a demotion waits for the peer's flush);
/// - 4681: an answer "the peer is outdated" arriving after a link had come and cleared
///   the mark let a primary write alone against a current peer (fixed: a stale answer
///   is ignored);
/// - 4855, 4913, 869, 1004: a flush (or a write) acknowledged on the primary alone
///   after a link loss, before its new generation was durable; a crash then left
///   generations equal and the survivor's lossy cache won (fixed: such
///   acknowledgements wait for that superblock);
/// - 2274: a node forgot its peer's standby when it declared it dead; the peer, back
///   from a partition it never saw, still stood by it, and the group ran nowhere
///   (fixed: requests end with a restart, not a dead verdict, and are shared again
///   with a report that was asked for).
///
/// A change to the simulator's draws changes what a seed plays; they are then just more
/// seeds.
#[test]
fn seeds_that_once_failed_hold() {
    for seed in [
        88, 122, 161, 186, 240, 344, 379, 393, 1904, 1987, 2874, 3646, 4136, 4810, 1249, 4401,
        4681, 4855, 4913, 869, 1004, 2274,
    ] {
        // Found before the witness joined the simulator: each plays as it did then.
        let opts = Options {
            witness: Some(false),
            ..Options::default()
        };
        run_seed(seed, &opts).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// With a witness whose shell turns refusals into grants, both nodes of a partition
/// hold the vote: caught at once.
#[test]
fn a_witness_granting_both_askers_is_caught() {
    let (seed, why) =
        first_violation(Unsafe::WitnessGrantsBoth, 10).expect("caught within 10 seeds");
    eprintln!("a witness granting both caught at seed {seed}");
    assert!(
        why.contains("granted the vote to") || why.contains("both nodes hold"),
        "{why}"
    );
}

/// The first seed (from 0) at which `variant` breaks an invariant, within `max` seeds.
fn first_violation(variant: Unsafe, max: u64) -> Option<(u64, String)> {
    let opts = Options {
        unsafe_variant: variant,
        ..Options::default()
    };
    (0..max).find_map(|seed| run_seed(seed, &opts).err().map(|e| (seed, e)))
}

#[test]
fn disk_fencing_dont_care_is_caught_serving_a_stale_copy() {
    let (seed, why) = first_violation(Unsafe::DiskDontCare, 40).expect("caught within 40 seeds");
    eprintln!("dont-care caught at seed {seed}");
    assert!(why.contains("without write"), "{why}");
}

#[test]
fn no_fencing_is_caught_running_the_group_twice() {
    let (seed, why) = first_violation(Unsafe::NoFencing, 40).expect("caught within 40 seeds");
    eprintln!("no fencing caught at seed {seed}");
    assert!(
        why.contains("two primaries") || why.contains("both nodes run"),
        "{why}"
    );
}
