//! From configured links to the driver's media: where each link's packets go.
//!
//! | medium | bound to | destination |
//! |--------|----------|-------------|
//! | ucast  | the port on the interface (SO_BINDTODEVICE) | every listed peer address that is not one of ours (Heartbeat's rule: one list serves both nodes) |
//! | bcast  | the port on the interface | the interface's broadcast address |
//! | mcast  | the group on the interface | the group |
//! | serial | the tty in raw mode at the configured speed | the other end of the line |

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, bail};
use tandem_config::LinkKind;
use tandem_membership::driver::Medium;

/// The driver medium for one configured link. `own` lists this node's addresses.
pub fn medium(name: &str, kind: &LinkKind, own: &[Address]) -> anyhow::Result<Medium> {
    Ok(match kind {
        LinkKind::Ucast {
            interface,
            peers,
            port,
        } => {
            let peers: Vec<SocketAddr> = peers
                .iter()
                .filter(|p| !own.iter().any(|a| a.address == **p))
                .map(|p| SocketAddr::new(*p, *port))
                .collect();
            if peers.is_empty() {
                bail!("link {name}: every ucast peer is one of this node's own addresses");
            }
            let any = if peers.iter().any(SocketAddr::is_ipv6) {
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::from(Ipv4Addr::UNSPECIFIED)
            };
            Medium::Ucast {
                bind: SocketAddr::new(any, *port),
                peers,
                device: Some(interface.clone()),
            }
        }
        LinkKind::Bcast { interface, port } => {
            let broadcast = own
                .iter()
                .find_map(|a| (a.interface == *interface).then_some(a.broadcast).flatten())
                .with_context(|| {
                    format!("link {name}: {interface} has no IPv4 address with a broadcast")
                })?;
            Medium::Bcast {
                bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, *port)),
                broadcast: SocketAddr::V4(SocketAddrV4::new(broadcast, *port)),
                device: Some(interface.clone()),
            }
        }
        LinkKind::Mcast {
            interface,
            group,
            port,
            ttl,
            multicast_loop,
        } => {
            let IpAddr::V4(group) = *group else {
                bail!("link {name}: IPv6 multicast links are not supported yet");
            };
            let local = own
                .iter()
                .find_map(|a| match a.address {
                    IpAddr::V4(v4) if a.interface == *interface => Some(v4),
                    _ => None,
                })
                .with_context(|| format!("link {name}: {interface} has no IPv4 address"))?;
            Medium::Mcast {
                group,
                port: *port,
                interface: local,
                ttl: u32::from(*ttl),
                loopback: *multicast_loop,
                device: Some(interface.clone()),
            }
        }
        LinkKind::Serial { device, baud } => Medium::Serial {
            path: device.clone(),
            baud: *baud,
        },
    })
}

/// One address of one of this node's interfaces.
#[derive(Debug, Clone)]
pub struct Address {
    /// Interface name.
    pub interface: String,
    /// The address.
    pub address: IpAddr,
    /// Its IPv4 broadcast address, if any.
    pub broadcast: Option<Ipv4Addr>,
}

/// Every address configured on this node's interfaces (getifaddrs).
pub fn local_addresses() -> anyhow::Result<Vec<Address>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head that is freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list getifaddrs returned, valid until freeifaddrs;
        // each sockaddr is read as the type its family names.
        unsafe {
            let entry = &*cursor;
            cursor = entry.ifa_next;
            if entry.ifa_addr.is_null() {
                continue;
            }
            let interface = std::ffi::CStr::from_ptr(entry.ifa_name)
                .to_string_lossy()
                .into_owned();
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = |sa: *const libc::sockaddr| {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
                    };
                    let address = v4(entry.ifa_addr);
                    // The directed broadcast from the netmask: an address configured
                    // without `brd` reports 0.0.0.0 as its broadcast, yet the subnet's
                    // broadcast address still reaches every host on the segment.
                    let broadcast = (entry.ifa_flags & libc::IFF_BROADCAST as u32 != 0
                        && !entry.ifa_netmask.is_null())
                    .then(|| {
                        let mask = u32::from(v4(entry.ifa_netmask));
                        Ipv4Addr::from(u32::from(address) | !mask)
                    });
                    out.push(Address {
                        interface,
                        address: IpAddr::V4(address),
                        broadcast,
                    });
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    out.push(Address {
                        interface,
                        address: IpAddr::V6(sin6.sin6_addr.s6_addr.into()),
                        broadcast: None,
                    });
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
