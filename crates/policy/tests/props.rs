//! Property tests over random views: every plan passes `check`, planning is
//! deterministic, and two nodes planning from the same facts never both start a group
//! without a fence in between.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tandem_config::Config;
use tandem_policy::{
    ActionKind, ClusterView, FailedOp, Failure, FenceState, GroupView, PeerState, PeerView,
    Request, RequestKind, ResourceState, ResourceView, Scope, Transition, WitnessVote,
};

const GROUPS: [(&str, &[&str]); 2] = [
    ("db", &["vip", "fs", "pgsql"]),
    ("mail", &["mailip", "postfix"]),
];

fn config(failback: bool, fencing_none: bool, device: bool, ping: bool) -> Config {
    let mut s = format!(
        "[cluster]\nname = \"ox\"\nauto_failback = \"{}\"\nfencing = \"{}\"\n{}",
        if failback { "on" } else { "off" },
        if fencing_none { "none" } else { "required" },
        if ping {
            "ping = [\"192.168.1.1\"]\n"
        } else {
            ""
        }
    );
    s.push_str("[[node]]\nname = \"ox1\"\n[[node]]\nname = \"ox2\"\n");
    s.push_str(
        "[[link]]\ntype = \"ucast\"\ninterface = \"eth1\"\npeers = [\"10.0.0.1\", \"10.0.0.2\"]\n",
    );
    if device {
        s.push_str("[[fence_device]]\nname = \"apc\"\nagent = \"fence_apc\"\n");
    }
    s.push_str(
        "[[group]]\nname = \"db\"\nhome = \"ox1\"\n\
         [[group.resource]]\ntype = \"ipaddr\"\nname = \"vip\"\naddress = \"10.0.1.1/24\"\n\
         [[group.resource]]\ntype = \"filesystem\"\nname = \"fs\"\ndevice = \"/dev/x\"\ndirectory = \"/srv\"\nfstype = \"ext4\"\n\
         [[group.resource]]\ntype = \"ocf\"\nname = \"pgsql\"\nprovider = \"heartbeat\"\nagent = \"Dummy\"\n\
         [[group]]\nname = \"mail\"\nhome = \"ox2\"\n\
         [[group.resource]]\ntype = \"ipaddr\"\nname = \"mailip\"\naddress = \"10.0.1.2/24\"\nmonitor_interval = \"0\"\n\
         [[group.resource]]\ntype = \"lsb\"\nname = \"postfix\"\nscript = \"postfix\"\n",
    );
    match Config::parse_str("prop.toml", &s) {
        Ok((c, _)) => c,
        Err(e) => panic!("test configuration does not load: {e}"),
    }
}

fn resource_state() -> impl Strategy<Value = ResourceState> {
    prop_oneof![
        6 => Just(ResourceState::Stopped),
        6 => Just(ResourceState::Started),
        1 => Just(ResourceState::Starting),
        1 => Just(ResourceState::Stopping),
        1 => Just(ResourceState::FailedStart),
        1 => Just(ResourceState::FailedStop),
        2 => Just(ResourceState::FailedMonitor),
        1 => Just(ResourceState::Unknown),
    ]
}

fn failure() -> impl Strategy<Value = Failure> {
    (
        prop_oneof![
            Just(FailedOp::Start),
            Just(FailedOp::Monitor),
            Just(FailedOp::Stop)
        ],
        any::<bool>(),
    )
        .prop_map(|(op, expired)| Failure { op, expired })
}

fn resource() -> impl Strategy<Value = ResourceView> {
    (resource_state(), prop::collection::vec(failure(), 0..4))
        .prop_map(|(state, failures)| ResourceView { state, failures })
}

/// Per group, per node, per resource.
type Global = Vec<(Option<u32>, [Vec<ResourceView>; 2])>;

fn global() -> impl Strategy<Value = Global> {
    let group = |n: usize| {
        (
            prop::option::of(1u32..5),
            prop::collection::vec(resource(), n),
            prop::collection::vec(resource(), n),
        )
            .prop_map(|(t, a, b)| (t, [a, b]))
    };
    (group(3), group(2)).prop_map(|(a, b)| vec![a, b])
}

fn fence_state() -> impl Strategy<Value = FenceState> {
    prop_oneof![
        Just(FenceState::NotNeeded),
        Just(FenceState::Required),
        Just(FenceState::InProgress),
        Just(FenceState::FencedOk),
        Just(FenceState::Failed),
        Just(FenceState::ConfirmedByOperator),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![Just("ox1"), Just("ox2")],
        prop_oneof![Just(RequestKind::Standby), Just(RequestKind::Takeover)],
        prop_oneof![Just(Scope::All), Just(Scope::Local), Just(Scope::Foreign)],
    )
        .prop_map(|(n, kind, scope)| Request {
            node: n.to_string(),
            kind,
            scope,
        })
}

fn groups_of(g: &Global) -> BTreeMap<String, GroupView> {
    let mut out = BTreeMap::new();
    for ((name, resources), (threshold, per_node)) in GROUPS.iter().zip(g) {
        let mut on = BTreeMap::new();
        for (node, states) in ["ox1", "ox2"].iter().zip(per_node) {
            let m: BTreeMap<String, ResourceView> = resources
                .iter()
                .zip(states)
                .map(|(r, v)| (r.to_string(), v.clone()))
                .collect();
            on.insert(node.to_string(), m);
        }
        out.insert(
            name.to_string(),
            GroupView {
                migration_threshold: *threshold,
                on,
            },
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn view_strategy() -> impl Strategy<Value = (Config, ClusterView)> {
    (
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        prop_oneof![Just("ox1"), Just("ox2")],
        (any::<bool>(), prop::bool::weighted(0.05)),
        (
            prop_oneof![
                Just(PeerState::Up),
                Just(PeerState::Dead),
                Just(PeerState::Unknown),
                Just(PeerState::ReturnedAfterPartition),
                Just(PeerState::LeftCleanly),
            ],
            prop::bool::weighted(0.85),
        ),
        (fence_state(), fence_state()),
        (
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        ),
        prop::collection::vec(request(), 0..3),
        global(),
        witness_vote(),
    )
        .prop_map(
            |(
                (fb, none, dev, ping),
                local,
                (initdead, maint),
                (peer, reported),
                (f1, f2),
                (p1, p2),
                requests,
                g,
                witness,
            )| {
                let cfg = config(fb, none, dev, ping);
                let mut fencing = BTreeMap::new();
                fencing.insert("ox1".to_string(), f1);
                fencing.insert("ox2".to_string(), f2);
                let mut pings = BTreeMap::new();
                if let Some(p) = p1 {
                    pings.insert("ox1".to_string(), p);
                }
                if let Some(p) = p2 {
                    pings.insert("ox2".to_string(), p);
                }
                let view = ClusterView {
                    description: None,
                    local: local.to_string(),
                    initdead_passed: initdead,
                    maintenance: maint,
                    peer: PeerView {
                        state: peer,
                        reported,
                    },
                    fencing,
                    ping: pings,
                    requests,
                    groups: groups_of(&g),
                    witness,
                };
                (cfg, view)
            },
        )
}

fn witness_vote() -> impl Strategy<Value = WitnessVote> {
    prop_oneof![
        4 => Just(WitnessVote::None),
        1 => Just(WitnessVote::Asking),
        1 => Just(WitnessVote::Granted),
        1 => Just(WitnessVote::Refused),
        1 => Just(WitnessVote::Isolated),
    ]
}

/// Groups this plan starts (or restarts) without any fence before the start.
fn unfenced_starts(t: &Transition) -> Vec<String> {
    let fences: Vec<_> = t
        .actions
        .iter()
        .filter(|a| matches!(a.kind, ActionKind::Fence { .. }))
        .map(|a| a.id)
        .collect();
    let mut out: Vec<String> = t
        .actions
        .iter()
        .filter_map(|a| match &a.kind {
            ActionKind::Start { group, .. } | ActionKind::Restart { group, .. }
                if !fences.iter().any(|&f| t.depends_on(a.id, f)) =>
            {
                Some(group.clone())
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// With a witness, a node that lost its peer and does not hold the vote (asking,
    /// refused, or isolated) never fences and never starts anything; isolated, it
    /// keeps nothing running either.
    #[test]
    fn without_the_vote_a_node_neither_fences_nor_starts(
        (cv, peer_unknown) in (view_strategy(), any::<bool>()),
        vote in prop_oneof![Just(WitnessVote::Asking), Just(WitnessVote::Refused), Just(WitnessVote::Isolated)],
    ) {
        let (cfg, mut view) = cv;
        if cfg.cluster.fencing == tandem_config::FencingPolicy::None {
            return Ok(());
        }
        view.peer.state = if peer_unknown { PeerState::Unknown } else { PeerState::Dead };
        view.initdead_passed = true;
        view.maintenance = false;
        view.fencing.clear();
        view.witness = vote;
        let t = tandem_policy::plan(&cfg, &view);
        let summary = tandem_policy::render::summary(&cfg, &view, &t);
        for a in &t.actions {
            prop_assert!(
                !matches!(a.kind, ActionKind::Fence { .. } | ActionKind::Start { .. }),
                "{vote:?}: {:?}\n{summary}", a.kind
            );
        }
        if vote == WitnessVote::Isolated {
            for g in view.groups.values() {
                // A resource in an unknown state is probed first, one in flight awaited
                // (the next plan acts); a failed stop blocks its group.
                if let Some(on) = g.on.get(&view.local).filter(|on| on.values().all(|rv| !matches!(rv.state, ResourceState::Unknown | ResourceState::Starting | ResourceState::Stopping | ResourceState::FailedStop))) {
                    for (r, rv) in on {
                        let stops = t.actions.iter().any(|a| matches!(&a.kind, ActionKind::Stop { resource, .. } if resource == r));
                        prop_assert!(!rv.state.holds() || stops || rv.state == ResourceState::FailedStop || matches!(rv.state, ResourceState::Stopping | ResourceState::Starting | ResourceState::Unknown), "isolated and keeps {r}\n{summary}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_plan_is_safe_and_deterministic((cfg, view) in view_strategy()) {
        prop_assert!(view.validate(&cfg).is_ok());
        let t = tandem_policy::plan(&cfg, &view);
        if let Err(v) = tandem_policy::check(&cfg, &view, &t) {
            let t_dbg = tandem_policy::render::summary(&cfg, &view, &t);
            prop_assert!(false, "violation: {v}\n{t_dbg}");
        }
        prop_assert_eq!(&t, &tandem_policy::plan(&cfg, &view));
        // The renderer never panics and always names the local node.
        let s = tandem_policy::render::summary(&cfg, &view, &t);
        let expected = format!("Transition on {}", view.local);
        prop_assert!(s.contains(&expected));
    }

    /// Both nodes up and reporting, each planning from the same facts: a group that at
    /// most one node holds is never started on both without a fence in between.
    #[test]
    fn two_nodes_never_both_start_a_group(
        (fb, none, ping) in (any::<bool>(), any::<bool>(), any::<bool>()),
        g in global(),
        requests in prop::collection::vec(request(), 0..3),
        (p1, p2) in (any::<bool>(), any::<bool>()),
    ) {
        let cfg = config(fb, none, true, ping);
        let groups = groups_of(&g);
        let view = |local: &str| ClusterView {
            description: None,
            local: local.to_string(),
            initdead_passed: true,
            maintenance: false,
            peer: PeerView { state: PeerState::Up, reported: true },
            fencing: BTreeMap::new(),
            ping: [("ox1".to_string(), p1), ("ox2".to_string(), p2)].into_iter().collect(),
            requests: requests.clone(),
            groups: groups.clone(),
            witness: WitnessVote::None,
        };
        let (v1, v2) = (view("ox1"), view("ox2"));
        let (t1, t2) = (tandem_policy::plan(&cfg, &v1), tandem_policy::plan(&cfg, &v2));
        let (s1, s2) = (unfenced_starts(&t1), unfenced_starts(&t2));
        for (gi, (name, _)) in GROUPS.iter().enumerate() {
            let held = |n: usize| g[gi].1[n].iter().any(|r| r.state.holds());
            if held(0) && held(1) {
                continue;
            }
            let both = s1.iter().any(|x| x == name) && s2.iter().any(|x| x == name);
            prop_assert!(
                !both,
                "both nodes start {}\n{}\n{}",
                name,
                tandem_policy::render::summary(&cfg, &v1, &t1),
                tandem_policy::render::summary(&cfg, &v2, &t2)
            );
        }
    }
}

fn settled_state() -> impl Strategy<Value = ResourceView> {
    (
        prop_oneof![
            4 => Just(ResourceState::Started),
            4 => Just(ResourceState::Stopped),
            1 => Just(ResourceState::FailedMonitor),
            1 => Just(ResourceState::FailedStart),
        ],
        prop::collection::vec(
            (
                prop_oneof![Just(FailedOp::Start), Just(FailedOp::Monitor)],
                any::<bool>(),
            )
                .prop_map(|(op, expired)| Failure { op, expired }),
            0..4,
        ),
    )
        .prop_map(|(state, failures)| ResourceView { state, failures })
}

/// Per group: which node (0, 1, none) holds it, and the resource states there.
fn placed() -> impl Strategy<Value = Vec<(Option<usize>, Vec<ResourceView>, Vec<ResourceView>)>> {
    let group = |n: usize| {
        (
            prop::option::of(0usize..2),
            prop::collection::vec(settled_state(), n),
            prop::collection::vec(
                (
                    prop_oneof![Just(FailedOp::Start), Just(FailedOp::Monitor)],
                    any::<bool>(),
                )
                    .prop_map(|(op, expired)| ResourceView {
                        state: ResourceState::Stopped,
                        failures: vec![Failure { op, expired }],
                    }),
                n,
            ),
        )
    };
    (group(3), group(2)).prop_map(|(a, b)| vec![a, b])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Both nodes up; they take turns planning and executing (every action succeeds,
    /// the other node sees the result in the next report). At no point does a group run
    /// on both nodes, and within a bounded number of turns both plans are idle: no
    /// ping-pong between auto_failback, stickiness, requests and failure thresholds.
    #[test]
    fn two_nodes_converge_without_double_running(
        (fb, ping) in (any::<bool>(), any::<bool>()),
        placed in placed(),
        requests in prop::collection::vec(request(), 0..3),
        (p1, p2) in (any::<bool>(), any::<bool>()),
        clean_peer_failures in any::<bool>(),
    ) {
        let cfg = config(fb, false, true, ping);
        // groups[g][node] = resource views, in configuration order.
        let mut state: Vec<[Vec<ResourceView>; 2]> = placed
            .iter()
            .map(|(holder, here, other)| {
                let other = if clean_peer_failures {
                    other.iter().map(|_| ResourceView::default()).collect()
                } else {
                    other.clone()
                };
                match holder {
                    Some(0) => [here.clone(), other],
                    Some(_) => [other, here.clone()],
                    None => [
                        here.iter().map(|r| ResourceView { state: ResourceState::Stopped, ..r.clone() }).collect(),
                        other,
                    ],
                }
            })
            .collect();
        let nodes = ["ox1", "ox2"];
        let view_for = |state: &Vec<[Vec<ResourceView>; 2]>, local: usize| {
            let g: Global = state
                .iter()
                .map(|per| (None, [per[0].clone(), per[1].clone()]))
                .collect();
            ClusterView {
                description: None,
                local: nodes[local].to_string(),
                initdead_passed: true,
                maintenance: false,
                peer: PeerView { state: PeerState::Up, reported: true },
                fencing: BTreeMap::new(),
                ping: [("ox1".to_string(), p1), ("ox2".to_string(), p2)].into_iter().collect(),
                requests: requests.clone(),
                groups: groups_of(&g),
                witness: WitnessVote::None,
            }
        };
        let mut idle_turns = 0;
        let mut turn = 0usize;
        while idle_turns < 2 {
            prop_assert!(turn < 12, "no convergence after {turn} turns");
            let n = turn % 2;
            let view = view_for(&state, n);
            let t = tandem_policy::plan(&cfg, &view);
            prop_assert!(tandem_policy::check(&cfg, &view, &t).is_ok());
            if t.is_idle() {
                idle_turns += 1;
            } else {
                idle_turns = 0;
            }
            for a in &t.actions {
                let (group, resource, new) = match &a.kind {
                    ActionKind::Start { group, resource } | ActionKind::Restart { group, resource } => {
                        (group, resource, ResourceState::Started)
                    }
                    ActionKind::Stop { group, resource } => (group, resource, ResourceState::Stopped),
                    ActionKind::Fence { .. } => {
                        prop_assert!(false, "fence planned between two healthy nodes");
                        continue;
                    }
                    _ => continue,
                };
                let gi = GROUPS.iter().position(|(g, _)| g == group).unwrap_or(0);
                let ri = GROUPS[gi].1.iter().position(|r| r == resource).unwrap_or(0);
                state[gi][n][ri].state = new;
                let on = |k: usize| state[gi][k].iter().any(|r| r.state.holds());
                prop_assert!(
                    !(on(0) && on(1)),
                    "{} runs on both nodes after {} on {}",
                    group,
                    tandem_policy::render::describe(&a.kind),
                    nodes[n]
                );
            }
            turn += 1;
        }
        // Settled: every group runs completely on at most one node, or not at all.
        for per in &state {
            for node in per {
                let held = node.iter().any(|r| r.state.holds());
                let full = node.iter().all(|r| r.state == ResourceState::Started);
                prop_assert!(!held || full, "a group is left half-running");
            }
        }
    }
}
