//! A minimal rtnetlink client: list links and addresses, add and delete addresses.
//! Messages are built and parsed with `netlink-packet-route`; the socket is ours.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// Netlink failures.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket failed.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request.
    #[error("kernel answered {0}")]
    Kernel(io::Error),
    /// A reply could not be decoded.
    #[error("undecodable netlink reply: {0}")]
    Decode(String),
}

impl NetlinkError {
    /// The errno the kernel answered, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address (empty for interfaces without one).
    pub mac: Vec<u8>,
    /// Administratively and operationally up (`IFF_UP`).
    pub up: bool,
    /// `IFF_NOARP` / loopback: no ARP possible.
    pub no_arp: bool,
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// `IFA_F_*` flags (the 32-bit `IFA_FLAGS` when present).
    pub flags: u32,
}

/// `IFA_F_TENTATIVE`: IPv6 duplicate address detection still running.
pub const IFA_F_TENTATIVE: u32 = 0x40;
/// `IFA_F_DADFAILED`: IPv6 duplicate address detection found another owner.
pub const IFA_F_DADFAILED: u32 = 0x08;

/// Splits one datagram into netlink messages; never panics on bad bytes.
pub fn parse_datagram(
    mut buf: &[u8],
) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return Err(NetlinkError::Decode(format!(
                "message length {len} with {} bytes left",
                buf.len()
            )));
        }
        let bytes = &buf[..len];
        // netlink-packet-route 0.25 indexes some attributes (IFA_CACHEINFO shorter than
        // 16 bytes, found by fuzzing) without checking their length: its panic becomes
        // a decode error here, like any other malformed message.
        let msg =
            std::panic::catch_unwind(|| NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes))
                .map_err(|_| {
                    NetlinkError::Decode("malformed message (the parser panicked)".into())
                })?
                .map_err(|e| NetlinkError::Decode(e.to_string()))?;
        out.push(msg);
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(out)
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket (in the network namespace of the calling thread).
    pub fn open() -> Result<Netlink, NetlinkError> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: fresh descriptor, owned from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A bounded wait for replies: a kernel that never answers must not hang an action.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid option struct and length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Netlink { fd, seq: 1 })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut replies = Vec::new();
        let mut rbuf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: valid buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), rbuf.as_mut_ptr().cast(), rbuf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for m in parse_datagram(&rbuf[..n as usize])? {
                if m.header.sequence_number != seq {
                    continue; // a stale reply to an earlier, abandoned request
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(NetlinkError::Kernel(io::Error::from_raw_os_error(
                                -code.get(),
                            ))),
                        };
                    }
                    // Dumps end with Done, other requests with their ACK (above).
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// All interfaces.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewLink(l) = r {
                let mut link = Link {
                    index: l.header.index,
                    name: String::new(),
                    mac: Vec::new(),
                    up: l.header.flags.contains(LinkFlags::Up),
                    no_arp: l.header.flags.contains(LinkFlags::Noarp)
                        || l.header.flags.contains(LinkFlags::Loopback),
                };
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::Address(m) => link.mac = m,
                        _ => {}
                    }
                }
                out.push(link);
            }
        }
        Ok(out)
    }

    /// All addresses of both families.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewAddress(m) = r {
                let mut local = None;
                let mut address = None;
                let mut flags = m.header.flags.bits() as u32;
                for a in m.attributes {
                    match a {
                        AddressAttribute::Local(ip) => local = Some(ip),
                        AddressAttribute::Address(ip) => address = Some(ip),
                        AddressAttribute::Flags(f) => flags = f.bits(),
                        _ => {}
                    }
                }
                // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
                // point-to-point links); IPv6 carries only IFA_ADDRESS.
                if let Some(addr) = local.or(address) {
                    out.push(Address {
                        index: m.header.index,
                        addr,
                        prefix_len: m.header.prefix_len,
                        flags,
                    });
                }
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.prefix_len = prefix_len;
        m.header.index = index;
        m.header.flags = AddressHeaderFlags::empty();
        m.attributes.push(AddressAttribute::Local(addr));
        m.attributes.push(AddressAttribute::Address(addr));
        m
    }

    /// Adds `addr/prefix_len` to interface `index`; an existing identical address is an
    /// error the caller sees as `EEXIST`.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
        broadcast: Option<std::net::Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        let mut m = Self::address_message(index, addr, prefix_len);
        if let Some(b) = broadcast {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Deletes `addr/prefix_len` from interface `index`.
    pub fn del_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let m = Self::address_message(index, addr, prefix_len);
        self.request(
            RouteNetlinkMessage::DelAddress(m),
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input libFuzzer found: a new-address message whose IFA_CACHEINFO attribute is
    /// shorter than the 16 bytes the parser reads from it.
    #[test]
    fn a_short_cacheinfo_attribute_is_an_error_not_a_panic() {
        let datagram: [u8; 60] = [
            0x2c, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x08, 0x00, 0x10, 0x00, 0x00, 0x00, 0x15,
            0x00, 0x00, 0x00, 0x0f, 0xff, 0x00, 0x00, 0x60, 0x00, 0x00, 0x0c, 0x00, 0x06, 0x00,
            0xff, 0xff, 0xff, 0xff, 0x0a, 0x25, 0x00, 0x48, 0x3d, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x10, 0x00, 0x00, 0x00, 0xfa, 0x0a, 0x00, 0xff, 0xff, 0x00, 0x2b, 0x04, 0xff,
            0xff, 0xff, 0x0a, 0x25,
        ];
        assert!(parse_datagram(&datagram).is_err());
    }

    #[test]
    fn datagram_parser_rejects_bad_lengths_without_panicking() {
        assert!(parse_datagram(&[]).unwrap().is_empty());
        let mut b = vec![0u8; 20];
        b[0] = 200; // claims 200 bytes
        assert!(parse_datagram(&b).is_err());
        b[0] = 3; // shorter than a header
        assert!(parse_datagram(&b).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_datagram(&bytes);
        }
    }

    #[test]
    fn loopback_is_listed_in_our_namespace() {
        // Reading the link table needs no privileges.
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(
            links.iter().any(|l| l.name == "lo" && l.no_arp),
            "{links:?}"
        );
    }
}
