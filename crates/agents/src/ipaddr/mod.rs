//! The built-in `ipaddr` agent: a service address added and removed over rtnetlink and
//! announced with gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6).
//!
//! ```text
//!  start:  present already on the right interface? ─yes─► announce ─► ok
//!            │ no
//!            ▼
//!          pick interface (named, or the one whose subnet holds the address; longest
//!          prefix wins) and prefix (given, or that subnet's) ─► RTM_NEWADDR
//!          ─► IPv6: wait for DAD (fail if another node owns it)
//!          ─► announce round 1 now; rounds 2..count every interval in the background,
//!             each only while the address is still ours
//!  stop:   RTM_DELADDR wherever the address is; absent = already stopped
//!  monitor: the address is on the interface (tentative counts, DAD-failed does not)
//! ```
//!
//! Defaults (from the configuration model) follow IPaddr2: 5 announcements 200 ms
//! apart. Heartbeat's original `IPaddr` sent 10 at 500 ms.

pub mod garp;
pub mod netlink;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use self::netlink::{Address, IFA_F_DADFAILED, IFA_F_TENTATIVE, Link, Netlink, NetlinkError};
use crate::exec::{Cancel, sleep_until};
use crate::result::{Action, ActionResult, ExecStatus, OcfExit};
use crate::{RunOptions, now};

/// One service address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddrAgent {
    /// The address.
    pub address: IpAddr,
    /// Prefix length; `None` = the prefix of the matching subnet.
    pub prefix_len: Option<u8>,
    /// Interface; `None` = the one whose subnet contains the address.
    pub interface: Option<String>,
    /// IPv4 broadcast; `None` = derived from the prefix.
    pub broadcast: Option<IpAddr>,
    /// Announcements sent after adding the address (0 = none).
    pub garp_count: u32,
    /// Gap between announcements.
    pub garp_interval: Duration,
}

/// Whether `addr` lies inside `net/prefix` (same family only).
pub fn in_subnet(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The IPv4 broadcast address of `addr/prefix` (none for /31 and /32).
pub fn broadcast_for(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix >= 31 {
        return None;
    }
    let host = u32::MAX >> prefix;
    Some(Ipv4Addr::from(u32::from(addr) | host))
}

/// Where the address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The interface.
    pub link: Link,
    /// The prefix length to use.
    pub prefix_len: u8,
}

/// Chooses interface and prefix from the link and address tables (pure).
pub fn place(
    agent: &IpAddrAgent,
    links: &[Link],
    addrs: &[Address],
) -> Result<Placement, (OcfExit, String)> {
    let candidates = addrs.iter().filter(|a| {
        a.addr != agent.address
            && a.flags & IFA_F_DADFAILED == 0
            && in_subnet(agent.address, a.addr, a.prefix_len)
    });
    match &agent.interface {
        Some(name) => {
            let link = links.iter().find(|l| &l.name == name).ok_or_else(|| {
                (
                    OcfExit::NotInstalled,
                    format!("interface {name} does not exist on this node"),
                )
            })?;
            let prefix_len = match agent.prefix_len {
                Some(p) => p,
                None => candidates
                    .filter(|a| a.index == link.index)
                    .map(|a| a.prefix_len)
                    .max()
                    .ok_or_else(|| {
                        (
                            OcfExit::NotConfigured,
                            format!(
                                "no prefix given and no subnet on {name} contains {}",
                                agent.address
                            ),
                        )
                    })?,
            };
            Ok(Placement {
                link: link.clone(),
                prefix_len,
            })
        }
        None => {
            let best = candidates.max_by_key(|a| a.prefix_len).ok_or_else(|| {
                (
                    OcfExit::NotConfigured,
                    format!(
                        "no interface has a subnet containing {}; name an interface",
                        agent.address
                    ),
                )
            })?;
            let link = links
                .iter()
                .find(|l| l.index == best.index)
                .ok_or_else(|| {
                    (
                        OcfExit::Generic,
                        format!("interface index {} vanished", best.index),
                    )
                })?;
            Ok(Placement {
                link: link.clone(),
                prefix_len: agent.prefix_len.unwrap_or(best.prefix_len),
            })
        }
    }
}

fn mac6(link: &Link) -> Option<[u8; 6]> {
    link.mac.as_slice().try_into().ok()
}

fn nl_err(what: &str, e: NetlinkError) -> ActionResult {
    let exit = match e.errno() {
        Some(libc::EPERM) | Some(libc::EACCES) => OcfExit::Perm,
        _ => OcfExit::Generic,
    };
    ActionResult::done(exit, format!("{what}: {e}"), Duration::ZERO)
}

/// Sends one announcement for `address` on `link`.
pub fn announce(link: &Link, address: IpAddr) -> std::io::Result<()> {
    let mac = mac6(link).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{} has no Ethernet address", link.name),
        )
    })?;
    match address {
        IpAddr::V4(ip) => garp::send_garp(link.index, mac, ip),
        IpAddr::V6(ip) => garp::send_unsolicited_na(link.index, mac, ip),
    }
}

impl IpAddrAgent {
    /// Our address on the configured interface (any interface when none is named; none
    /// at all when the named interface does not exist).
    fn ours<'a>(&self, addrs: &'a [Address], links: &[Link]) -> Vec<&'a Address> {
        let want_index = match &self.interface {
            Some(n) => match links.iter().find(|l| &l.name == n) {
                Some(l) => Some(l.index),
                None => return Vec::new(),
            },
            None => None,
        };
        addrs
            .iter()
            .filter(|a| a.addr == self.address && want_index.is_none_or(|i| i == a.index))
            .collect()
    }

    /// Runs one action.
    pub fn run(&self, action: Action, opts: &RunOptions) -> ActionResult {
        let started = now();
        let deadline = started + opts.timeout;
        let mut r = match action {
            Action::Start => self.start(deadline, opts.cancel.as_ref()),
            Action::Stop => self.stop(),
            Action::Monitor => self.monitor(),
            Action::ValidateAll => self.validate(),
            Action::MetaData => {
                ActionResult::done(OcfExit::Unimplemented, "built-in agent", Duration::ZERO)
            }
        };
        r.duration = now() - started;
        r
    }

    fn validate(&self) -> ActionResult {
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        if self.prefix_len.is_some_and(|p| p > max) {
            return ActionResult::done(
                OcfExit::NotConfigured,
                format!("prefix length above {max}"),
                Duration::ZERO,
            );
        }
        if self
            .broadcast
            .is_some_and(|b| !b.is_ipv4() || self.address.is_ipv6())
        {
            return ActionResult::done(
                OcfExit::NotConfigured,
                "broadcast is for IPv4 addresses only",
                Duration::ZERO,
            );
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            return ActionResult::done(
                OcfExit::NotConfigured,
                format!("{} cannot be a service address", self.address),
                Duration::ZERO,
            );
        }
        ActionResult::done(OcfExit::Success, "", Duration::ZERO)
    }

    fn tables(&self) -> Result<(Netlink, Vec<Link>, Vec<Address>), ActionResult> {
        let mut nl = Netlink::open().map_err(|e| nl_err("open netlink", e))?;
        let links = nl.links().map_err(|e| nl_err("list interfaces", e))?;
        let addrs = nl.addresses().map_err(|e| nl_err("list addresses", e))?;
        Ok((nl, links, addrs))
    }

    fn monitor(&self) -> ActionResult {
        let (_, links, addrs) = match self.tables() {
            Ok(t) => t,
            Err(r) => return r,
        };
        let ours = self.ours(&addrs, &links);
        match ours.iter().find(|a| a.flags & IFA_F_DADFAILED == 0) {
            Some(a) => {
                let name = links
                    .iter()
                    .find(|l| l.index == a.index)
                    .map_or("?", |l| l.name.as_str());
                ActionResult::done(
                    OcfExit::Success,
                    format!("{}/{} on {name}", a.addr, a.prefix_len),
                    Duration::ZERO,
                )
            }
            None if !ours.is_empty() => ActionResult::done(
                OcfExit::Generic,
                format!("{}: duplicate address detected", self.address),
                Duration::ZERO,
            ),
            None => ActionResult::done(
                OcfExit::NotRunning,
                format!("{} is not configured", self.address),
                Duration::ZERO,
            ),
        }
    }

    fn stop(&self) -> ActionResult {
        let (mut nl, _links, addrs) = match self.tables() {
            Ok(t) => t,
            Err(r) => return r,
        };
        // Remove it wherever it is: an address left on any interface still answers.
        let present: Vec<&Address> = addrs.iter().filter(|a| a.addr == self.address).collect();
        if present.is_empty() {
            return ActionResult::done(
                OcfExit::Success,
                format!("{} not present (already stopped)", self.address),
                Duration::ZERO,
            );
        }
        for a in &present {
            if let Err(e) = nl.del_address(a.index, a.addr, a.prefix_len) {
                if !matches!(
                    e.errno(),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) {
                    return nl_err(&format!("delete {}/{}", a.addr, a.prefix_len), e);
                }
            }
        }
        ActionResult::done(
            OcfExit::Success,
            format!("removed {}", self.address),
            Duration::ZERO,
        )
    }

    fn start(&self, deadline: Instant, cancel: Option<&Cancel>) -> ActionResult {
        let v = self.validate();
        if !v.is_success() {
            return v;
        }
        let (mut nl, links, addrs) = match self.tables() {
            Ok(t) => t,
            Err(r) => return r,
        };
        let already = self
            .ours(&addrs, &links)
            .into_iter()
            .find(|a| a.flags & IFA_F_DADFAILED == 0)
            .cloned();
        let (link, note) = if let Some(a) = already {
            match links.iter().find(|l| l.index == a.index) {
                Some(l) => (l.clone(), "already present"),
                None => {
                    return ActionResult::done(
                        OcfExit::Generic,
                        "interface vanished",
                        Duration::ZERO,
                    );
                }
            }
        } else {
            if let Some(other) = addrs.iter().find(|a| a.addr == self.address) {
                let name = links
                    .iter()
                    .find(|l| l.index == other.index)
                    .map_or("?", |l| l.name.as_str());
                return ActionResult::done(
                    OcfExit::Generic,
                    format!(
                        "{} is already configured on {name}, not on the configured interface",
                        self.address
                    ),
                    Duration::ZERO,
                );
            }
            let placement = match place(self, &links, &addrs) {
                Ok(p) => p,
                Err((exit, why)) => return ActionResult::done(exit, why, Duration::ZERO),
            };
            if !placement.link.up {
                return ActionResult::done(
                    OcfExit::Generic,
                    format!("interface {} is down", placement.link.name),
                    Duration::ZERO,
                );
            }
            let broadcast = match (self.address, self.broadcast) {
                (IpAddr::V4(_), Some(IpAddr::V4(b))) => Some(b),
                (IpAddr::V4(a), _) => broadcast_for(a, placement.prefix_len),
                _ => None,
            };
            match nl.add_address(
                placement.link.index,
                self.address,
                placement.prefix_len,
                broadcast,
            ) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return nl_err(
                        &format!(
                            "add {}/{} on {}",
                            self.address, placement.prefix_len, placement.link.name
                        ),
                        e,
                    );
                }
            }
            (placement.link, "added")
        };
        if self.address.is_ipv6() {
            if let Err(r) = self.wait_for_dad(&mut nl, link.index, deadline, cancel) {
                return r;
            }
        }
        let mut reason = format!("{} {} on {}", self.address, note, link.name);
        if self.garp_count > 0 {
            if let Err(e) = announce(&link, self.address) {
                // The address is up; a failed announcement is worth a line, not a failure.
                reason.push_str(&format!("; announcement failed: {e}"));
            } else if self.garp_count > 1 {
                self.announce_in_background(link);
            }
        }
        ActionResult::done(OcfExit::Success, reason, Duration::ZERO)
    }

    fn wait_for_dad(
        &self,
        nl: &mut Netlink,
        index: u32,
        deadline: Instant,
        cancel: Option<&Cancel>,
    ) -> Result<(), ActionResult> {
        loop {
            let addrs = nl.addresses().map_err(|e| nl_err("list addresses", e))?;
            let Some(a) = addrs
                .iter()
                .find(|a| a.addr == self.address && a.index == index)
            else {
                return Err(ActionResult::done(
                    OcfExit::Generic,
                    "address vanished during DAD",
                    Duration::ZERO,
                ));
            };
            if a.flags & IFA_F_DADFAILED != 0 {
                let _ = nl.del_address(index, a.addr, a.prefix_len);
                return Err(ActionResult::done(
                    OcfExit::Generic,
                    format!(
                        "{}: duplicate address detected, another node owns it",
                        self.address
                    ),
                    Duration::ZERO,
                ));
            }
            if a.flags & IFA_F_TENTATIVE == 0 {
                return Ok(());
            }
            if now() >= deadline {
                return Err(ActionResult::not_done(
                    ExecStatus::Timeout,
                    "IPv6 DAD still running at the timeout",
                    Duration::ZERO,
                ));
            }
            if !sleep_until(now() + Duration::from_millis(100), cancel) {
                return Err(ActionResult::not_done(
                    ExecStatus::Cancelled,
                    "cancelled during DAD",
                    Duration::ZERO,
                ));
            }
        }
    }

    /// Rounds 2..count, each after `garp_interval`, only while the address is still on
    /// the interface (a stop in between must end the announcements: announcing an
    /// address we gave up would pull its traffic back to us).
    fn announce_in_background(&self, link: Link) {
        let address = self.address;
        let rounds = self.garp_count - 1;
        let interval = self.garp_interval;
        // A spawned thread shares this thread's network namespace.
        let _ = std::thread::Builder::new()
            .name(format!("garp-{address}"))
            .spawn(move || {
                for _ in 0..rounds {
                    if !sleep_until(now() + interval, None) {
                        return;
                    }
                    let still_ours = Netlink::open()
                        .and_then(|mut nl| nl.addresses())
                        .map(|a| a.iter().any(|a| a.addr == address && a.index == link.index))
                        .unwrap_or(false);
                    if !still_ours || announce(&link, address).is_err() {
                        return;
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: vec![2, 0, 0, 0, 0, index as u8],
            up: true,
            no_arp: false,
        }
    }

    fn addr(index: u32, a: &str, p: u8) -> Address {
        Address {
            index,
            addr: a.parse().unwrap(),
            prefix_len: p,
            flags: 0,
        }
    }

    fn agent(a: &str) -> IpAddrAgent {
        IpAddrAgent {
            address: a.parse().unwrap(),
            prefix_len: None,
            interface: None,
            broadcast: None,
            garp_count: 5,
            garp_interval: Duration::from_millis(200),
        }
    }

    #[test]
    fn subnet_math() {
        assert!(in_subnet(
            "10.0.0.7".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            24
        ));
        assert!(!in_subnet(
            "10.0.1.7".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            24
        ));
        assert!(in_subnet(
            "10.9.9.9".parse().unwrap(),
            "1.2.3.4".parse().unwrap(),
            0
        ));
        assert!(in_subnet(
            "fd00::7".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            64
        ));
        assert!(!in_subnet(
            "fd01::7".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            64
        ));
        assert!(!in_subnet(
            "10.0.0.7".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            0
        ));
        assert_eq!(
            broadcast_for(Ipv4Addr::new(10, 0, 0, 7), 24),
            Some(Ipv4Addr::new(10, 0, 0, 255))
        );
        assert_eq!(broadcast_for(Ipv4Addr::new(10, 0, 0, 7), 32), None);
    }

    #[test]
    fn placement_takes_the_longest_matching_subnet_and_its_prefix() {
        let links = [link(1, "lo"), link(2, "eth0"), link(3, "eth1")];
        let addrs = [
            addr(1, "127.0.0.1", 8),
            addr(2, "10.0.0.1", 16),
            addr(3, "10.0.5.1", 24),
            addr(3, "fd00::1", 64),
        ];
        let p = place(&agent("10.0.5.9"), &links, &addrs).unwrap();
        assert_eq!((p.link.name.as_str(), p.prefix_len), ("eth1", 24));
        let p = place(&agent("10.0.9.9"), &links, &addrs).unwrap();
        assert_eq!((p.link.name.as_str(), p.prefix_len), ("eth0", 16));
        let p = place(&agent("fd00::9"), &links, &addrs).unwrap();
        assert_eq!((p.link.name.as_str(), p.prefix_len), ("eth1", 64));
        let e = place(&agent("192.168.1.1"), &links, &addrs).unwrap_err();
        assert_eq!(e.0, OcfExit::NotConfigured);
    }

    #[test]
    fn placement_on_a_named_interface() {
        let links = [link(2, "eth0")];
        let addrs = [addr(2, "10.0.0.1", 24)];
        let mut a = agent("192.168.7.7");
        a.interface = Some("eth0".into());
        assert_eq!(
            place(&a, &links, &addrs).unwrap_err().0,
            OcfExit::NotConfigured
        );
        a.prefix_len = Some(32);
        assert_eq!(place(&a, &links, &addrs).unwrap().prefix_len, 32);
        a.interface = Some("eth9".into());
        assert_eq!(
            place(&a, &links, &addrs).unwrap_err().0,
            OcfExit::NotInstalled
        );
    }
}
