//! Heartbeat link I/O: one socket (or tty) per configured link, and where its packets go.
//!
//! The membership core decides *what* to send on which link; this module only knows how
//! to reach the peers of each medium:
//!
//! | medium  | socket                                                    | destination |
//! |---------|-----------------------------------------------------------|-------------|
//! | ucast   | UDP bound to the port on the interface (SO_BINDTODEVICE)  | every listed peer address that is not one of ours (Heartbeat's rule) |
//! | bcast   | UDP with SO_BROADCAST, bound to the port on the interface | the interface's broadcast address |
//! | mcast   | UDP joined to the group on the interface, TTL and loop set | the group |
//! | serial  | the tty in raw mode at the configured speed               | the other end of the line (COBS-framed with a CRC) |

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use anyhow::{Context, bail};
use socket2::{Domain, Protocol, Socket, Type};
use tandem_config::LinkKind;
use tandem_wire::serial::{FrameDecoder, encode_frame};

/// Largest datagram read from a socket; anything longer is truncated and the core drops it.
const DATAGRAM_BYTES_MAX: usize = 2048;

/// One open link.
pub struct LinkIo {
    /// The link's name, for logs.
    pub name: String,
    medium: Medium,
}

enum Medium {
    Udp {
        socket: std::net::UdpSocket,
        destinations: Vec<SocketAddr>,
    },
    Serial {
        tty: std::fs::File,
        decoder: FrameDecoder,
    },
}

impl LinkIo {
    /// Opens the link described by `kind`. `own` lists this node's addresses, used to
    /// skip ourselves among ucast peers.
    pub fn open(name: &str, kind: &LinkKind, own: &[IpAddr]) -> anyhow::Result<Self> {
        let medium = match kind {
            LinkKind::Ucast {
                interface,
                peers,
                port,
            } => {
                let destinations: Vec<SocketAddr> = peers
                    .iter()
                    .filter(|p| !own.contains(p))
                    .map(|p| SocketAddr::new(*p, *port))
                    .collect();
                if destinations.is_empty() {
                    bail!("link {name}: every ucast peer is one of this node's own addresses");
                }
                let v6 = destinations.iter().any(|d| d.is_ipv6());
                let socket = udp_socket(interface, *port, v6)?;
                Medium::Udp {
                    socket,
                    destinations,
                }
            }
            LinkKind::Bcast { interface, port } => {
                let socket = udp_socket(interface, *port, false)?;
                socket
                    .set_broadcast(true)
                    .with_context(|| format!("link {name}: SO_BROADCAST"))?;
                let broadcast = interface_broadcast(interface)
                    .with_context(|| format!("link {name}: broadcast address of {interface}"))?;
                Medium::Udp {
                    socket,
                    destinations: vec![SocketAddr::V4(SocketAddrV4::new(broadcast, *port))],
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
                let socket = udp_socket(interface, *port, false)?;
                let index = interface_index(interface)?;
                let s = socket2::SockRef::from(&socket);
                s.join_multicast_v4_n(&group, &socket2::InterfaceIndexOrAddress::Index(index))
                    .with_context(|| format!("link {name}: join {group} on {interface}"))?;
                s.set_multicast_ttl_v4(u32::from(*ttl))?;
                s.set_multicast_loop_v4(*multicast_loop)?;
                Medium::Udp {
                    socket,
                    destinations: vec![SocketAddr::V4(SocketAddrV4::new(group, *port))],
                }
            }
            LinkKind::Serial { device, baud } => Medium::Serial {
                tty: open_tty(device, *baud).with_context(|| format!("link {name}"))?,
                decoder: FrameDecoder::new(),
            },
        };
        Ok(Self {
            name: name.to_owned(),
            medium,
        })
    }

    /// The descriptor to poll for input.
    pub fn fd(&self) -> RawFd {
        match &self.medium {
            Medium::Udp { socket, .. } => socket.as_raw_fd(),
            Medium::Serial { tty, .. } => tty.as_raw_fd(),
        }
    }

    /// Sends one packet to every destination of the link. Errors are returned for the
    /// caller to count and log; a failing link must never stop the others.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.medium {
            Medium::Udp {
                socket,
                destinations,
            } => {
                let mut result = Ok(());
                for d in destinations.iter() {
                    if let Err(e) = socket.send_to(bytes, d) {
                        result = Err(e);
                    }
                }
                result
            }
            Medium::Serial { tty, .. } => tty.write_all(&encode_frame(bytes)),
        }
    }

    /// Reads what is available without blocking and hands every complete packet to `f`.
    pub fn receive(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        match &mut self.medium {
            Medium::Udp { socket, .. } => {
                let mut buf = [0u8; DATAGRAM_BYTES_MAX];
                loop {
                    match socket.recv_from(&mut buf) {
                        Ok((n, _)) => f(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
            Medium::Serial { tty, decoder } => {
                let mut buf = [0u8; 4096];
                loop {
                    match tty.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            // Frames that fail their CRC are line noise: dropped here,
                            // before the MAC is computed, and logged at debug level.
                            for frame in decoder.push(&buf[..n]) {
                                match frame {
                                    Ok(packet) => f(&packet),
                                    Err(err) => tracing::debug!("serial frame dropped: {err}"),
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

fn udp_socket(interface: &str, port: u16, v6: bool) -> anyhow::Result<std::net::UdpSocket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).context("UDP socket")?;
    socket.set_reuse_address(true)?;
    if v6 {
        socket.set_only_v6(false)?;
    }
    socket
        .bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("bind to interface {interface} (SO_BINDTODEVICE)"))?;
    let any: SocketAddr = if v6 {
        SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    };
    socket
        .bind(&any.into())
        .with_context(|| format!("bind UDP port {port} on {interface}"))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn interface_index(interface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(interface).context("interface name")?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface named {interface}");
    }
    Ok(index)
}

/// Every address configured on this node's interfaces (to skip ourselves among peers).
pub fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    Ok(interfaces()?.into_iter().map(|i| i.address).collect())
}

fn interface_broadcast(interface: &str) -> anyhow::Result<Ipv4Addr> {
    interfaces()?
        .into_iter()
        .find_map(|i| (i.name == interface).then_some(i.broadcast).flatten())
        .with_context(|| format!("{interface} has no IPv4 broadcast address"))
}

struct InterfaceAddress {
    name: String,
    address: IpAddr,
    broadcast: Option<Ipv4Addr>,
}

fn interfaces() -> anyhow::Result<Vec<InterfaceAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list getifaddrs returned, which stays valid until
        // freeifaddrs; each sockaddr is read according to its family.
        unsafe {
            let entry = &*cursor;
            cursor = entry.ifa_next;
            if entry.ifa_addr.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(entry.ifa_name)
                .to_string_lossy()
                .into_owned();
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    let address = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    let broadcast = (entry.ifa_flags & libc::IFF_BROADCAST as u32 != 0
                        && !entry.ifa_ifu.is_null())
                    .then(|| {
                        let b = &*(entry.ifa_ifu as *const libc::sockaddr_in);
                        Ipv4Addr::from(u32::from_be(b.sin_addr.s_addr))
                    });
                    out.push(InterfaceAddress {
                        name,
                        address: IpAddr::V4(address),
                        broadcast,
                    });
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    out.push(InterfaceAddress {
                        name,
                        address: IpAddr::V6(sin6.sin6_addr.s6_addr.into()),
                        broadcast: None,
                    });
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Opens a tty for a serial link: raw mode, 8N1, no flow control, the given speed,
/// non-blocking.
fn open_tty(device: &Path, baud: u32) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(device)
        .with_context(|| format!("open {}", device.display()))?;
    let speed = baud_constant(baud)
        .with_context(|| format!("{baud} baud is not a speed the serial driver offers"))?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr before use; fd is open.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{}: not a tty", device.display()));
        }
        libc::cfmakeraw(&mut t);
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        t.c_cflag &= !(libc::CRTSCTS | libc::CSTOPB | libc::PARENB);
        t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
        libc::cfsetispeed(&mut t, speed);
        libc::cfsetospeed(&mut t, speed);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{}: set raw mode", device.display()));
        }
    }
    Ok(tty)
}

fn baud_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        1200 => libc::B1200,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        460800 => libc::B460800,
        921600 => libc::B921600,
        _ => return None,
    })
}
