//! Announcing an address: gratuitous ARP (IPv4) over an `AF_PACKET` socket and
//! unsolicited neighbour advertisements (IPv6) over an ICMPv6 raw socket.
//!
//! IPv4 follows Heartbeat's `send_arp`: each announcement is a *pair* — an ARP request
//! and an ARP reply, both broadcast, both with sender = target = the address — because
//! some systems heed only one of the two.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;

/// The 28-byte ARP body for an announcement; `reply` picks the reply form (target
/// hardware address = ours) over the request form (target hardware = broadcast, as
/// iputils `arping -U` and `send_arp` send it).
pub fn arp_packet(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    p[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&(if reply { 2u16 } else { 1u16 }).to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    p[18..24].copy_from_slice(&if reply { mac } else { [0xff; 6] });
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// The 32-byte ICMPv6 neighbour advertisement for an unsolicited announcement:
/// Override set, Solicited and Router clear, with our link-layer address as option.
/// The checksum is left zero: the kernel fills it for ICMPv6 raw sockets.
pub fn neighbour_advert(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136; // neighbour advertisement
    p[4] = 0x20; // O (override)
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 2; // target link-layer address option
    p[25] = 1; // length in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

fn sock(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one gratuitous ARP pair (request, then reply) on interface `ifindex`.
pub fn send_garp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let s = sock(libc::AF_PACKET, libc::SOCK_DGRAM, ETH_P_ARP.to_be() as i32)?;
    // SAFETY: zeroed sockaddr_ll is a valid starting value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for reply in [false, true] {
        let pkt = arp_packet(mac, ip, reply);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: valid int option.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sends one unsolicited neighbour advertisement for `ip` to all nodes (ff02::1) on
/// interface `ifindex`, from `ip` itself, with hop limit 255 as RFC 4861 requires.
pub fn send_unsolicited_na(ifindex: u32, mac: [u8; 6], ip: Ipv6Addr) -> io::Result<()> {
    let s = sock(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let fd = s.as_raw_fd();
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255)?;
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?;
    setsockopt_int(
        fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
        ifindex as i32,
    )?;
    // SAFETY: zeroed sockaddr_in6 is valid.
    let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    src.sin6_family = libc::AF_INET6 as u16;
    src.sin6_addr.s6_addr = ip.octets();
    if ip.segments()[0] & 0xffc0 == 0xfe80 {
        src.sin6_scope_id = ifindex;
    }
    // SAFETY: valid address.
    let rc = unsafe {
        libc::bind(
            fd,
            (&src as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as u16;
    dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    dst.sin6_scope_id = ifindex;
    let pkt = neighbour_advert(mac, ip);
    // SAFETY: valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&dst as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_request_and_reply_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let req = arp_packet(mac, ip, false);
        assert_eq!(&req[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[8..14], &mac);
        assert_eq!(&req[14..18], &[10, 1, 2, 3]);
        assert_eq!(&req[18..24], &[0xff; 6]);
        assert_eq!(&req[24..28], &[10, 1, 2, 3]);
        let rep = arp_packet(mac, ip, true);
        assert_eq!(&rep[6..8], &[0, 2]);
        assert_eq!(&rep[18..24], &mac);
    }

    #[test]
    fn neighbour_advert_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip: Ipv6Addr = "fd00::5".parse().unwrap();
        let na = neighbour_advert(mac, ip);
        assert_eq!(na[0], 136);
        assert_eq!(na[4], 0x20);
        assert_eq!(&na[8..24], &ip.octets());
        assert_eq!(&na[24..26], &[2, 1]);
        assert_eq!(&na[26..32], &mac);
    }
}
