//! The controller alone, one behaviour each: inputs and `now` in, commands out. The
//! harness plays the shell: it runs nothing, it answers what the test says.

mod harness;

use std::time::Duration;

use harness::*;
use tandem_controller::{Command, DiskOrder, Input, Op, Operator, PeerMessage, SendTag};
use tandem_membership::Event;
use tandem_policy::{RequestKind, Scope};
use tandem_witness::WitnessMessage;

#[test]
fn every_resource_is_probed_first_and_nothing_starts_before_the_peer_reports() {
    let mut s = Shell::new(CONFIG);
    assert_eq!(
        runs(&s.seen),
        [(Op::Probe, "ip".into()), (Op::Probe, "svc".into())]
    );
    s.peer_up();
    s.done(Op::Probe, "ip", not_running());
    let cmds = s.done(Op::Probe, "svc", not_running());
    assert!(
        runs(&cmds).is_empty(),
        "started before the peer reported: {cmds:?}"
    );
    // The report of a group this node does not know changes nothing.
    let cmds = s.peer_says(PeerMessage::Report {
        group: "unknown".into(),
        resources: Default::default(),
    });
    assert!(runs(&cmds).is_empty());
    let cmds = s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: Default::default(),
    });
    assert!(runs(&cmds).is_empty(), "started before the claim: {cmds:?}");
    let cmds = s.answer_claim(true);
    assert_eq!(runs(&cmds), [(Op::Start, "ip".into())], "left to right");
    let cmds = s.done(Op::Start, "ip", ok());
    assert_eq!(runs(&cmds), [(Op::Start, "svc".into())]);
}

#[test]
fn monitors_run_at_their_interval_and_poll_timeout_says_when() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    let due = s.c.poll_timeout().expect("a monitor is due");
    assert!(due <= s.now + Duration::from_secs(1));
    let cmds = s.advance(Duration::from_millis(1000));
    let monitors: Vec<&str> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::RunMonitor {
                resource, interval, ..
            } => {
                assert_eq!(*interval, Duration::from_secs(1));
                Some(resource.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(monitors, ["ip"]);
    // Not again while it runs.
    let cmds = s.advance(Duration::from_millis(1500));
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::RunMonitor { resource, .. } if resource == "ip")),
        "{cmds:?}"
    );
}

#[test]
fn a_failed_monitor_restarts_the_resource_and_the_failure_expires() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    s.advance(Duration::from_millis(2000));
    let cmds = s.feed(Input::MonitorDone {
        group: "g".into(),
        resource: "svc".into(),
        result: failed(),
    });
    assert!(
        runs(&cmds)
            .iter()
            .any(|(op, r)| r == "svc" && matches!(op, Op::Restart | Op::Stop)),
        "{cmds:?}"
    );
    // The report tells the peer about the failure; after failure_timeout it is gone.
    let report_failures = |cmds: &[Command]| {
        cmds.iter().find_map(|c| match c {
            Command::Send {
                message: PeerMessage::Report { resources, .. },
                ..
            } => Some(
                resources
                    .get("svc")
                    .map(|r| r.failures.clone())
                    .unwrap_or_default(),
            ),
            _ => None,
        })
    };
    assert_eq!(report_failures(&cmds).as_deref(), Some("m"));
    let cmds = s.advance(Duration::from_secs(11));
    assert_eq!(report_failures(&cmds).as_deref(), Some(""), "{cmds:?}");
    let st = s.c.operator(s.now, Operator::Status).unwrap();
    assert_eq!(st["groups"][0]["resources"][1]["failcount"], 0, "{st}");
}

#[test]
fn operator_requests_stay_bounded_and_the_newest_decides() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    for i in 0..500 {
        let kind = if i % 2 == 0 {
            RequestKind::Standby
        } else {
            RequestKind::Takeover
        };
        s.c.operator(s.now, Operator::Request(kind, Scope::All))
            .unwrap();
        s.drain();
    }
    let st = s.c.operator(s.now, Operator::Status).unwrap();
    let transition = st["transition"].as_str().unwrap_or("");
    assert!(!transition.is_empty());
    // 500 requests of the same scope keep one (each replaces the last).
    assert_eq!(st["requests"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["requests"][0]["kind"], "takeover", "{st}");
    // The last was a takeover by a: the group stays here.
    assert_eq!(st["groups"][0]["owner"], "a", "{st}");
}

#[test]
fn a_cluster_without_groups_refuses_standby() {
    let config = CONFIG.split("[[group]]").next().unwrap().to_string();
    let mut s = Shell::new(&config);
    let r =
        s.c.operator(s.now, Operator::Request(RequestKind::Standby, Scope::All));
    assert!(r.is_err_and(|e| e.contains("no resource groups")));
}

#[test]
fn a_clean_shutdown_stops_right_to_left_releases_leaves_and_says_goodbye() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    let cmds = s.feed(Input::Shutdown);
    assert!(
        matches!(cmds.first(), Some(Command::Disks(DiskOrder::StopUnmanaged))),
        "disks no group manages are demoted first: {cmds:?}"
    );
    assert_eq!(runs(&cmds), [(Op::Stop, "svc".into())]);
    let cmds = s.done(Op::Stop, "svc", ok());
    assert_eq!(runs(&cmds), [(Op::Stop, "ip".into())]);
    let cmds = s.done(Op::Stop, "ip", ok());
    let released = cmds.iter().position(|c| {
        matches!(c, Command::Send { message: PeerMessage::Released { group }, .. } if group == "g")
    });
    let leave = cmds
        .iter()
        .position(|c| matches!(c, Command::Disks(DiskOrder::Leave)));
    let goodbye = cmds.iter().position(|c| {
        matches!(
            c,
            Command::Send {
                message: PeerMessage::Goodbye,
                tag: SendTag::Goodbye
            }
        )
    });
    assert!(
        released < leave && leave < goodbye && goodbye.is_some(),
        "released, then the disks leave, then goodbye: {cmds:?}"
    );
    // Exit once the peer has the goodbye.
    let cmds = s.feed(Input::Sent {
        tag: SendTag::Goodbye,
        id: 42,
    });
    assert!(!cmds.iter().any(|c| matches!(c, Command::Exit)));
    let cmds = s.feed(Input::Membership(Event::MessageAcked { to: PEER, id: 42 }));
    assert!(cmds.iter().any(|c| matches!(c, Command::Exit)), "{cmds:?}");
    assert!(s.c.finished());
}

#[test]
fn a_clean_shutdown_in_maintenance_mode_leaves_every_group_running_and_detaches_the_disks() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    s.c.operator(s.now, Operator::Maintenance(true)).unwrap();
    s.drain();
    let cmds = s.feed(Input::Shutdown);
    assert!(runs(&cmds).is_empty(), "nothing stops: {cmds:?}");
    let detach = cmds
        .iter()
        .position(|c| matches!(c, Command::Disks(DiskOrder::Detach)));
    let exit = cmds.iter().position(|c| matches!(c, Command::Exit));
    assert!(
        detach.is_some() && detach < exit,
        "the disks are detached, then the daemon exits: {cmds:?}"
    );
    assert!(
        !cmds.iter().any(|c| matches!(
            c,
            Command::Disks(DiskOrder::Leave | DiskOrder::StopUnmanaged)
                | Command::Send {
                    message: PeerMessage::Goodbye | PeerMessage::Released { .. },
                    ..
                }
        )),
        "no demotion, no release, no goodbye: the group still runs here: {cmds:?}"
    );
    assert!(s.c.maintenance().0, "the flag outlives the daemon");
    assert!(s.c.finished());
}

#[test]
fn a_daemon_restarted_in_maintenance_mode_probes_and_neither_starts_nor_stops() {
    let mut s = Shell::new(CONFIG);
    s.c.resume_maintenance(true, 1_000);
    s.peer_up();
    // What the last daemon left running is found by the probes.
    s.done(Op::Probe, "ip", ok());
    let cmds = s.done(Op::Probe, "svc", ok());
    let maintenance = cmds.iter().position(|c| {
        matches!(
            c,
            Command::Send {
                message: PeerMessage::Maintenance {
                    on: true,
                    at_ms: 1_000
                },
                ..
            }
        )
    });
    let report = cmds.iter().position(
        |c| matches!(c, Command::Send { message: PeerMessage::Report { group, .. }, .. } if group == "g"),
    );
    assert!(
        maintenance.is_some() && maintenance < report,
        "a peer without the flag learns it before the report: {cmds:?}"
    );
    s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: Default::default(),
    });
    let cmds = s.advance(Duration::from_secs(120));
    assert!(runs(&cmds).is_empty(), "{cmds:?}");
    // Maintenance off: the group already runs here, whole; nothing to do.
    s.c.operator(s.now, Operator::Maintenance(false)).unwrap();
    let mut cmds = s.drain();
    cmds.extend(s.advance(Duration::from_secs(5)));
    assert!(
        runs(&cmds).iter().all(|(op, _)| *op == Op::Probe),
        "nothing starts or stops: {cmds:?}"
    );
    assert!(!s.seen.iter().any(|c| matches!(
        c,
        Command::RunAction {
            op: Op::Start | Op::Stop | Op::Restart,
            ..
        }
    )));
}

/// A peer that stopped its daemon in maintenance mode left its group running (no
/// goodbye): while maintenance lasts nothing happens; once it ends with the peer still
/// away, the peer is fenced before the group starts here — never both running it.
#[test]
fn a_peer_gone_in_maintenance_mode_is_fenced_before_the_takeover_once_maintenance_ends() {
    let mut s = Shell::on("b", &witness_config(false));
    s.peer_up();
    s.done(Op::Probe, "ip", not_running());
    s.done(Op::Probe, "svc", not_running());
    let started = |state: &str| tandem_controller::messages::Reported {
        state: state.into(),
        failures: String::new(),
    };
    s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: [
            ("ip".to_string(), started("started")),
            ("svc".to_string(), started("started")),
        ]
        .into(),
    });
    s.peer_says(PeerMessage::Maintenance { on: true, at_ms: 5 });
    assert!(s.c.maintenance().0, "set by the peer");
    let mut cmds = s.peer_dead();
    cmds.extend(s.advance(Duration::from_secs(60)));
    assert_eq!(fences(&cmds), 0, "maintenance: nobody is fenced: {cmds:?}");
    assert!(
        runs(&cmds).is_empty(),
        "maintenance: nothing starts: {cmds:?}"
    );
    s.c.operator(s.now, Operator::Maintenance(false)).unwrap();
    let mut cmds = s.drain();
    for _ in 0..10 {
        cmds.extend(s.advance(Duration::from_secs(1)));
    }
    assert_eq!(fences(&cmds), 1, "{cmds:?}");
    assert!(
        !runs(&cmds).iter().any(|(op, _)| *op == Op::Start),
        "nothing starts before the fence succeeded: {cmds:?}"
    );
}

/// Maintenance mode switched while the peer's daemon was away reaches it when they meet
/// again: the later switch wins on both nodes, whichever of them made it.
#[test]
fn the_later_maintenance_switch_wins_when_the_nodes_meet_again() {
    let mut s = Shell::new(CONFIG);
    // This node stopped in maintenance mode (switched on at 1000 ms)…
    s.c.resume_maintenance(true, 1_000);
    // …and an operator switched it off on the peer (at 2000 ms) meanwhile.
    s.peer_says(PeerMessage::Maintenance {
        on: false,
        at_ms: 2_000,
    });
    assert_eq!(s.c.maintenance(), (false, 2_000));
    // An older switch (a report the peer sent before) changes nothing.
    s.peer_says(PeerMessage::Maintenance {
        on: true,
        at_ms: 1_500,
    });
    assert_eq!(s.c.maintenance(), (false, 2_000));
    // The other way round: this node's newer switch goes out before its report.
    let mut s = Shell::new(CONFIG);
    s.c.resume_maintenance(false, 3_000);
    s.peer_up();
    s.done(Op::Probe, "ip", not_running());
    let cmds = s.done(Op::Probe, "svc", not_running());
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::Send {
                message: PeerMessage::Maintenance {
                    on: false,
                    at_ms: 3_000
                },
                ..
            }
        )),
        "{cmds:?}"
    );
    s.peer_says(PeerMessage::Maintenance {
        on: true,
        at_ms: 1_000,
    });
    assert_eq!(s.c.maintenance(), (false, 3_000), "the peer's is older");
}

/// A switch made after hearing the peer's wins even when the peer's clock runs far
/// ahead: the stamp is never less than one more than the newest seen (a hybrid logical
/// clock), so the peer, comparing stamps, takes it.
#[test]
fn a_maintenance_switch_after_the_peers_wins_whatever_the_clocks_say() {
    let mut s = Shell::new(CONFIG);
    s.idle_cluster();
    // The peer's clock is an hour ahead of this node's (the harness starts at 1 000 000 ms).
    let ahead = 1_000_000 + 3_600_000;
    s.peer_says(PeerMessage::Maintenance {
        on: true,
        at_ms: ahead,
    });
    assert_eq!(s.c.maintenance(), (true, ahead));
    let now = s.now;
    s.c.operator(now, Operator::Maintenance(false)).unwrap();
    let sent = s.drain().into_iter().find_map(|c| match c {
        Command::Send {
            message: PeerMessage::Maintenance { on, at_ms },
            ..
        } => Some((on, at_ms)),
        _ => None,
    });
    assert_eq!(
        sent,
        Some((false, ahead + 1)),
        "the switch must order after the peer's"
    );
    assert_eq!(s.c.maintenance(), (false, ahead + 1));
}

#[test]
fn a_shutdown_whose_goodbye_is_not_acknowledged_exits_after_the_wait() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    s.feed(Input::Shutdown);
    s.done(Op::Stop, "svc", ok());
    s.done(Op::Stop, "ip", ok());
    s.feed(Input::Sent {
        tag: SendTag::Goodbye,
        id: 9,
    });
    let cmds = s.advance(Duration::from_secs(3));
    assert!(cmds.iter().any(|c| matches!(c, Command::Exit)), "{cmds:?}");
}

#[test]
fn a_stop_that_fails_at_shutdown_leaves_without_goodbye() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    s.feed(Input::Shutdown);
    let cmds = s.done(Op::Stop, "svc", failed());
    assert_eq!(
        runs(&cmds),
        [(Op::Stop, "ip".into())],
        "the rest still stops"
    );
    let cmds = s.done(Op::Stop, "ip", ok());
    assert!(cmds.iter().any(|c| matches!(c, Command::Exit)));
    assert!(
        !s.seen.iter().any(|c| matches!(
            c,
            Command::Send {
                message: PeerMessage::Goodbye,
                ..
            }
        )),
        "a node that cannot stop must be fenced, not say goodbye"
    );
}

const DISK: &str = r#"
[[disk]]
name = "r0"
fencing = "resource-only"
[disk.on.a]
device = "/dev/tandem/r0"
backing = "/srv/a.img"
address = "10.0.0.1:7788"
[disk.on.b]
device = "/dev/tandem/r0"
backing = "/srv/b.img"
address = "10.0.0.2:7788"
"#;

#[test]
fn disk_fencing_asks_the_peer_and_tells_the_disk_its_answer() {
    let mut s = Shell::new(&format!("{CONFIG}{DISK}"));
    s.idle_cluster();
    let cmds = s.feed(Input::DiskFencePeer { disk: "r0".into() });
    let request = cmds
        .iter()
        .find_map(|c| match c {
            Command::Send {
                message: PeerMessage::Outdate { disk, request },
                tag: SendTag::Outdate(t),
            } if disk == "r0" && t == request => Some(*request),
            _ => None,
        })
        .expect("an outdate request to the peer");
    s.feed(Input::Sent {
        tag: SendTag::Outdate(request),
        id: 5,
    });
    let cmds = s.peer_says(PeerMessage::Outdated {
        disk: "r0".into(),
        request,
        error: None,
    });
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Disks(DiskOrder::PeerOutdated(d)) if d == "r0")),
        "{cmds:?}"
    );
}

#[test]
fn disk_fencing_goes_on_alone_under_resource_only_when_the_message_fails() {
    let mut s = Shell::new(&format!("{CONFIG}{DISK}"));
    s.idle_cluster();
    s.feed(Input::DiskFencePeer { disk: "r0".into() });
    let request = s
        .seen
        .iter()
        .find_map(|c| match c {
            Command::Send {
                tag: SendTag::Outdate(r),
                ..
            } => Some(*r),
            _ => None,
        })
        .unwrap();
    s.feed(Input::Sent {
        tag: SendTag::Outdate(request),
        id: 77,
    });
    let cmds = s.feed(Input::Membership(Event::MessageFailed {
        to: PEER,
        id: 77,
        reason: tandem_membership::FailReason::RetransmitLimit,
    }));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Disks(DiskOrder::PeerUnreachable(d)) if d == "r0")),
        "{cmds:?}"
    );
}

#[test]
fn the_peers_outdate_request_is_carried_out_and_answered() {
    let mut s = Shell::new(&format!("{CONFIG}{DISK}"));
    s.idle_cluster();
    let cmds = s.peer_says(PeerMessage::Outdate {
        disk: "r0".into(),
        request: 3,
    });
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Disks(DiskOrder::Outdate { disk, request: 3 }) if disk == "r0"
    )));
    let cmds = s.feed(Input::OutdateDone {
        disk: "r0".into(),
        request: 3,
        result: Ok(()),
    });
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Send {
            message: PeerMessage::Outdated {
                request: 3,
                error: None,
                ..
            },
            ..
        }
    )));
}

fn answers(cmds: &[Command]) -> Vec<bool> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send {
                message: PeerMessage::ClaimAnswer { granted, .. },
                ..
            } => Some(*granted),
            _ => None,
        })
        .collect()
}

/// Two views stale in mirror image (each node's own failure expired, the peer's not
/// yet) would both pick themselves: while the peer is heard, a group starts from
/// nothing only once the peer grants the claim, and a refusal starts nothing.
#[test]
fn a_group_starts_from_nothing_only_once_the_peer_grants_its_claim() {
    let mut s = Shell::new(CONFIG);
    s.idle_cluster();
    assert_eq!(s.claims_sent(), [("g".to_string(), 1)]);
    assert!(runs(&s.seen).iter().all(|(op, _)| *op == Op::Probe));
    let cmds = s.answer_claim(false);
    assert!(runs(&cmds).is_empty(), "refused, yet started: {cmds:?}");
    // The refusal counts as the peer starting the group until its report speaks, or two
    // deadtimes pass: then this node claims again, and a grant starts it.
    let cmds = s.advance(Duration::from_millis(1500));
    assert!(runs(&cmds).is_empty());
    assert_eq!(s.claims_sent().len(), 1);
    s.advance(Duration::from_millis(600));
    assert_eq!(
        s.claims_sent().len(),
        2,
        "claims again once the refusal expired"
    );
    let cmds = s.answer_claim(true);
    assert_eq!(runs(&cmds), [(Op::Start, "ip".into())]);
}

/// Claims that cross: the node whose name sorts first ("a") refuses the other's and
/// keeps its own; the other ("b") withdraws its own, grants, and gives back the grant
/// that arrives for its withdrawn claim.
#[test]
fn claims_that_cross_are_won_by_the_node_whose_name_sorts_first() {
    // "a" sees home "a"; "b" is made to want the group by a standby of "a".
    let mut a = Shell::on("a", CONFIG);
    a.idle_cluster();
    assert_eq!(a.claims_sent().len(), 1);
    let cmds = a.peer_says(PeerMessage::Claim {
        group: "g".into(),
        id: 1,
    });
    assert_eq!(answers(&cmds), [false]);
    let cmds = a.answer_claim(true);
    assert_eq!(runs(&cmds), [(Op::Start, "ip".into())]);

    let config = CONFIG.replace("home = \"a\"", "home = \"b\"");
    let mut b = Shell::on("b", &config);
    b.idle_cluster();
    assert_eq!(b.claims_sent().len(), 1, "b claims its home group");
    let cmds = b.peer_says(PeerMessage::Claim {
        group: "g".into(),
        id: 1,
    });
    assert_eq!(answers(&cmds), [true], "b withdraws and grants");
    assert!(runs(&cmds).is_empty());
    let cmds = b.answer_claim(true);
    assert!(
        runs(&cmds).is_empty(),
        "a withdrawn claim's grant starts nothing"
    );
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::Send { message: PeerMessage::Released { group }, .. } if group == "g"
        )),
        "the unneeded grant is given back: {cmds:?}"
    );
    // Until a's report says it started, b counts the group as starting there.
    let cmds = b.advance(Duration::from_millis(500));
    assert!(runs(&cmds).is_empty());
    assert_eq!(b.claims_sent().len(), 1);
}

/// A granted claim holds this node back even when a report the claimer sent before it
/// heard the grant says it runs nothing and has failed; its `starting` report (or its
/// release) then takes over.
#[test]
fn a_granted_claim_holds_this_node_back_until_the_claimer_reports() {
    let config = CONFIG.replace("home = \"a\"", "home = \"b\"");
    let mut s = Shell::on("a", &config);
    s.idle_cluster();
    assert!(s.claims_sent().is_empty(), "b's home: a waits");
    let cmds = s.peer_says(PeerMessage::Claim {
        group: "g".into(),
        id: 7,
    });
    assert_eq!(answers(&cmds), [true]);
    let stale = PeerMessage::Report {
        group: "g".into(),
        resources: [(
            "ip".to_string(),
            tandem_controller::messages::Reported {
                state: "stopped".into(),
                failures: "s".into(),
            },
        )]
        .into(),
    };
    let cmds = s.peer_says(stale);
    assert!(runs(&cmds).is_empty(), "{cmds:?}");
    assert!(s.claims_sent().is_empty(), "held back by the granted claim");
    // The claim given back: the failed peer no longer counts as starting.
    s.peer_says(PeerMessage::Released { group: "g".into() });
    assert_eq!(s.claims_sent().len(), 1);
}

/// A claim unanswered when the peer is lost is withdrawn: the held start no longer
/// blocks the transition, and the start follows the rules for a lost peer.
#[test]
fn an_unanswered_claim_is_withdrawn_when_the_peer_is_lost() {
    let mut s = Shell::new(CONFIG);
    s.idle_cluster();
    assert_eq!(s.claims_sent().len(), 1);
    let cmds = s.feed(Input::Membership(Event::NodeDead {
        node: PEER,
        incarnation: Some(1),
    }));
    // fencing = "none": a lost peer's groups start without a fence.
    assert_eq!(runs(&cmds), [(Op::Start, "ip".into())], "{cmds:?}");
    // A grant that was still on its way starts nothing twice.
    let cmds = s.answer_claim(true);
    assert!(runs(&cmds).is_empty());
}

/// A peer that returns after a partition it never saw (it was frozen: only lateness on
/// its side) is asked for its report, and a node asked reports at once — else the
/// planner would wait for that report for ever.
#[test]
fn a_peer_back_from_a_partition_is_asked_to_report_and_a_node_asked_reports() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    s.feed(Input::Membership(Event::NodeDead {
        node: PEER,
        incarnation: Some(1),
    }));
    let cmds = s.feed(Input::Membership(Event::NodeReturnedAfterPartition {
        node: PEER,
        incarnation: 1,
    }));
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::Send {
                message: PeerMessage::AskReport,
                ..
            }
        )),
        "{cmds:?}"
    );
    let cmds = s.peer_says(PeerMessage::AskReport);
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::Send { message: PeerMessage::Report { group, .. }, .. } if group == "g"
        )),
        "{cmds:?}"
    );
}

/// Node b, holding nothing, loses a (which ran the group): without a witness it waits
/// `fencing_delay` before fencing; with one it asks, and fences the moment the vote is
/// granted.
#[test]
fn with_the_witness_s_vote_a_node_holding_nothing_fences_at_once() {
    for with_witness in [false, true] {
        let mut s = Shell::on("b", &witness_config(with_witness));
        s.idle_cluster();
        if with_witness {
            s.witness_up();
        }
        let cmds = s.peer_dead();
        assert_eq!(fences(&cmds), 0, "fenced before the vote or the delay");
        let mut all = cmds.clone();
        all.extend(s.advance(Duration::from_millis(100)));
        if with_witness {
            let asked = vote_requests(&all);
            assert_eq!(asked.len(), 1, "{all:?}");
            assert_eq!(fences(&all), 0, "fenced before the answer");
            let cmds = s.witness_says(WitnessMessage::VoteAnswer {
                request: asked[0],
                granted: true,
                reason: "b may fence a".into(),
            });
            assert_eq!(fences(&cmds), 1, "the vote fences at once: {cmds:?}");
            assert_eq!(s.c.status()["witness"]["vote"], "granted");
        } else {
            assert!(vote_requests(&all).is_empty());
            assert_eq!(fences(&all), 0, "no delay without a witness");
            let later = s.advance(Duration::from_secs(6));
            assert_eq!(fences(&later), 1, "fenced after fencing_delay");
        }
    }
}

/// Refused, a node neither fences nor takes over, however long it waits.
#[test]
fn a_node_refused_the_vote_neither_fences_nor_starts() {
    let mut s = Shell::on("b", &witness_config(true));
    s.idle_cluster();
    s.witness_up();
    s.peer_dead();
    let asked = vote_requests(&s.seen);
    s.witness_says(WitnessMessage::VoteAnswer {
        request: asked[0],
        granted: false,
        reason: "the vote went to a".into(),
    });
    let mut later = Vec::new();
    for _ in 0..100 {
        later.extend(s.advance(Duration::from_millis(100)));
    }
    assert_eq!(fences(&later), 0);
    assert!(
        runs(&later).iter().all(|(op, _)| *op != Op::Start),
        "{later:?}"
    );
    assert!(vote_requests(&later).len() >= 2, "a refusal is asked again");
}

/// The node running the group loses the witness and then its peer within a deadtime:
/// it is cut off from both, so it stops the group and fences nobody.
#[test]
fn a_node_that_loses_peer_and_witness_together_stops_and_fences_nobody() {
    let mut s = Shell::new(&witness_config(true));
    s.witness_up();
    s.started_here();
    s.feed(Input::Membership(Event::NodeDead {
        node: WITNESS,
        incarnation: Some(1),
    }));
    s.advance(Duration::from_millis(300));
    let mut cmds = s.peer_dead();
    cmds.extend(s.done(Op::Stop, "svc", ok()));
    cmds.extend(s.done(Op::Stop, "ip", ok()));
    for _ in 0..100 {
        cmds.extend(s.advance(Duration::from_millis(100)));
    }
    assert_eq!(
        runs(&cmds),
        [(Op::Stop, "svc".into()), (Op::Stop, "ip".into())],
        "stops right to left and starts nothing"
    );
    assert_eq!(fences(&cmds), 0);
    assert!(vote_requests(&cmds).is_empty(), "nobody to ask");
    assert_eq!(s.c.status()["witness"]["vote"], "isolated");
}

/// The winner releases its vote when it hears its peer again.
#[test]
fn a_granted_vote_is_released_when_the_peer_is_heard_again() {
    let mut s = Shell::on("b", &witness_config(true));
    s.idle_cluster();
    s.witness_up();
    s.peer_dead();
    let asked = vote_requests(&s.seen);
    s.witness_says(WitnessMessage::VoteAnswer {
        request: asked[0],
        granted: true,
        reason: "ok".into(),
    });
    let cmds = s.feed(Input::Membership(Event::NodeRestarted {
        node: s.peer_id,
        incarnation: 2,
        previous: 1,
    }));
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::SendToWitness(WitnessMessage::Release { peer }) if peer == "a"
        )),
        "{cmds:?}"
    );
}

/// A request the cluster would not carry out is refused at once with the reason (the
/// CLI prints it and exits non-zero) and never reaches the peer; once the views settle
/// the same request is accepted.
#[test]
fn a_request_the_cluster_would_not_carry_out_is_refused_with_the_reason() {
    let mut s = Shell::new(CONFIG);
    let ask = |s: &mut Shell, kind: RequestKind, scope: Scope| {
        let r = s.c.operator(s.now, Operator::Request(kind, scope));
        let cmds = s.drain();
        let shared = cmds.iter().any(|c| {
            matches!(
                c,
                Command::Send {
                    message: PeerMessage::Request { .. },
                    ..
                }
            )
        });
        // (An accepted request goes to the peer when it is reachable.)
        assert!(
            r.is_ok() || !shared,
            "a refused request reached the peer: {r:?}"
        );
        r
    };
    let refused = |r: Result<serde_json::Value, String>, why: &str| {
        let e = r.expect_err("expected a refusal");
        assert!(e.contains(why), "{e:?} does not say {why:?}");
    };
    // Not probed yet: this node does not know what runs here.
    refused(
        ask(&mut s, RequestKind::Standby, Scope::All),
        "has not probed 2 of its resources",
    );
    // The peer is up and has not reported (what both nodes were stuck in).
    s.peer_up();
    s.done(Op::Probe, "ip", not_running());
    s.done(Op::Probe, "svc", not_running());
    refused(
        ask(&mut s, RequestKind::Standby, Scope::All),
        "b is up but has not reported its state of g",
    );
    refused(
        ask(&mut s, RequestKind::Takeover, Scope::All),
        "has not reported",
    );
    // No group in scope: `a` is the home of the only group.
    s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: Default::default(),
    });
    refused(
        ask(&mut s, RequestKind::Standby, Scope::Foreign),
        "no group falls in the scope of this standby (`foreign`) on a",
    );
    // Settled: accepted.
    assert!(ask(&mut s, RequestKind::Standby, Scope::All).is_ok());
    assert!(ask(&mut s, RequestKind::Takeover, Scope::Local).is_ok());
    // Maintenance: nothing would move.
    s.c.operator(s.now, Operator::Maintenance(true)).unwrap();
    refused(
        ask(&mut s, RequestKind::Takeover, Scope::All),
        "maintenance mode is on",
    );
    s.c.operator(s.now, Operator::Maintenance(false)).unwrap();
    s.drain();
    // The peer dead: nobody would take the group; a takeover still stands.
    s.feed(Input::Membership(Event::NodeDead {
        node: PEER,
        incarnation: Some(1),
    }));
    refused(
        ask(&mut s, RequestKind::Standby, Scope::All),
        "b is dead: no node would take over g",
    );
    assert!(ask(&mut s, RequestKind::Takeover, Scope::All).is_ok());
    // Back after a partition: settled (its report, fencing) before anything moves.
    s.feed(Input::Membership(Event::NodeReturnedAfterPartition {
        node: PEER,
        incarnation: 1,
    }));
    refused(
        ask(&mut s, RequestKind::Takeover, Scope::All),
        "b came back after a partition",
    );
    // Its report, holding nothing `a` holds: the partition is over (a partition healed
    // before fencing completed once left both nodes refusing every request for ever).
    s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: Default::default(),
    });
    assert!(ask(&mut s, RequestKind::Takeover, Scope::All).is_ok());
}

/// A node's standing requests end when it restarts (after a fence or a crash): a
/// takeover it asked for does not pull the group back from the node that took over after
/// it failed. Declared dead only, it keeps them (it may be behind a partition).
#[test]
fn the_peers_requests_end_when_it_restarts() {
    for dies in [true, false] {
        let mut s = Shell::new(CONFIG);
        s.started_here();
        s.peer_says(PeerMessage::Request {
            node: "b".into(),
            kind: RequestKind::Takeover,
            scope: Scope::All,
            at_ms: 2_000_000,
        });
        assert_eq!(s.c.status()["requests"].as_array().unwrap().len(), 1);
        if dies {
            s.peer_dead();
        } else {
            s.feed(Input::Membership(Event::NodeRestarted {
                node: PEER,
                incarnation: 2,
                previous: 1,
            }));
        }
        assert_eq!(
            s.c.status()["requests"].as_array().unwrap().len(),
            usize::from(dies),
            "dies: {dies}"
        );
    }
}

/// `tandem fence` and `tandem fence confirm` act only on the cluster's nodes, and a
/// confirmation that the peer is down is refused while this node hears it: it would let
/// the peer's groups start here while they run there.
#[test]
fn fencing_requests_name_a_node_and_a_heard_peer_cannot_be_confirmed_down() {
    let mut s = Shell::new(CONFIG);
    s.started_here();
    let now = s.now;
    for op in [
        Operator::Fence("ox3".into()),
        Operator::FenceConfirm("ox3".into()),
    ] {
        let why = s.c.operator(now, op).unwrap_err();
        assert!(why.contains("not a node of this cluster"), "{why}");
    }
    let why =
        s.c.operator(now, Operator::FenceConfirm("b".into()))
            .unwrap_err();
    assert!(why.contains("b is up"), "{why}");
    assert_eq!(
        s.c.status()["fencing"]["history"]
            .as_array()
            .map_or(0, Vec::len),
        0,
        "a refused request left a record"
    );
    // Once the peer is silent, the operator's word is what the cluster waits for.
    s.peer_dead();
    let now = s.now;
    assert!(
        s.c.operator(now, Operator::FenceConfirm("b".into()))
            .is_ok()
    );
}

/// A peer that is silent and known down (fenced, or confirmed by the operator) runs
/// nothing: status stops showing its last report as running.
#[test]
fn status_shows_a_fenced_peer_running_nothing() {
    let mut s = Shell::new(CONFIG);
    s.idle_cluster();
    let started = tandem_controller::messages::Reported {
        state: "started".into(),
        failures: String::new(),
    };
    s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: [
            ("ip".to_string(), started.clone()),
            ("svc".to_string(), started),
        ]
        .into_iter()
        .collect(),
    });
    let peer_state = |s: &Shell| s.c.status()["groups"][0]["resources"][0]["peer_state"].clone();
    assert_eq!(peer_state(&s), "started");
    assert_eq!(s.c.status()["groups"][0]["owner"], "b");
    s.peer_dead();
    assert_eq!(
        peer_state(&s),
        "started",
        "dead is not down: it may still run it"
    );
    let now = s.now;
    s.c.operator(now, Operator::FenceConfirm("b".into()))
        .unwrap();
    assert_eq!(peer_state(&s), "stopped");
    assert_ne!(s.c.status()["groups"][0]["owner"], "b");
}

/// Requests are one-shot moves (Heartbeat's hb_standby): ox2's standby that handed the
/// group to ox1 does not push the group away from ox2 again when ox1, which failed and
/// was taken over from, comes back — with auto_failback off, the group stays. (Before,
/// the standby stood and the group left ox2 as soon as ox1 was back.)
#[test]
fn a_standby_does_not_push_the_group_away_after_the_peer_failed_and_returned() {
    let mut s = Shell::on("b", CONFIG);
    s.peer_up();
    s.done(Op::Probe, "ip", not_running());
    s.done(Op::Probe, "svc", not_running());
    let started = tandem_controller::messages::Reported {
        state: "started".into(),
        failures: String::new(),
    };
    let running: std::collections::BTreeMap<String, _> = [
        ("ip".to_string(), started.clone()),
        ("svc".to_string(), started),
    ]
    .into_iter()
    .collect();
    s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: running,
    });
    // An operator's standby on b (its groups go to a, which runs them already).
    let now = s.now;
    s.c.operator(now, Operator::Request(RequestKind::Standby, Scope::All))
        .unwrap();
    assert_eq!(s.c.status()["requests"].as_array().map(Vec::len), Some(1));
    // a fails; b takes the group over (no fencing in this cluster).
    s.peer_dead();
    s.advance(Duration::from_millis(100));
    s.done(Op::Start, "ip", ok());
    s.done(Op::Start, "svc", ok());
    assert_eq!(s.c.status()["groups"][0]["owner"], "b");
    // a comes back with a new incarnation and reports nothing running.
    let cmds = s.feed(Input::Membership(Event::NodeRestarted {
        node: s.peer_id,
        incarnation: 2,
        previous: 1,
    }));
    let mut seen = cmds;
    seen.extend(s.peer_says(PeerMessage::Report {
        group: "g".into(),
        resources: Default::default(),
    }));
    for _ in 0..20 {
        seen.extend(s.advance(Duration::from_millis(500)));
    }
    let stops: Vec<_> = runs(&seen)
        .into_iter()
        .filter(|(op, _)| *op == Op::Stop)
        .collect();
    assert!(stops.is_empty(), "the group was pushed away: {stops:?}");
    assert_eq!(s.c.status()["requests"].as_array().map(Vec::len), Some(0));
}
