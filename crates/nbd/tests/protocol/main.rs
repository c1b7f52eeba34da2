//! Raw-socket protocol tests: malformed input, pipelining, out-of-order replies, shutdown.

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, RawClient};
use tandem_nbd::proto::{self, cflag, cmd, errno, opt, rep};
use tandem_nbd::{BlockDevice, BufResult, Capabilities, DeviceError, DeviceFuture, MemoryDevice};

const SIZE: usize = 1 << 20;

fn mem() -> (Arc<MemoryDevice>, Harness) {
    let dev = Arc::new(MemoryDevice::new(SIZE));
    let h = Harness::start(vec![("m", dev.clone() as Arc<dyn BlockDevice>)]);
    (dev, h)
}

/// After a refused request the connection still works.
fn assert_alive(c: &mut RawClient, handle: u64) {
    c.request(cmd::READ, 0, handle, 0, 8);
    assert_eq!(c.reply(), (0, handle));
    c.read_n(8);
}

#[test]
fn bad_request_magic_drops_the_connection_and_counts() {
    let (_d, h) = mem();
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    let mut b = proto::encode_request_header(&proto::RequestHeader {
        flags: 0,
        kind: cmd::READ,
        handle: 1,
        offset: 0,
        length: 8,
    });
    b[0] = 0;
    c.send(&b);
    assert!(c.closed_by_server());
    assert_eq!(h.server.stats().rejected_bad_magic, 1);
    // The server keeps serving others.
    let (mut c2, _, _) = RawClient::go(&h.socket, "m");
    assert_alive(&mut c2, 9);
}

#[test]
fn out_of_range_requests_get_errno_and_the_connection_survives() {
    let (dev, h) = mem();
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    c.request(cmd::READ, 0, 1, SIZE as u64 - 4, 8);
    assert_eq!(c.reply(), (errno::EINVAL, 1));
    // A write past the end: its payload is consumed, ENOSPC is answered.
    c.request(cmd::WRITE, 0, 2, SIZE as u64, 16);
    c.send(&[0xEE; 16]);
    assert_eq!(c.reply(), (errno::ENOSPC, 2));
    c.request(cmd::WRITE_ZEROES, 0, 3, u64::MAX - 1, 16);
    assert_eq!(c.reply(), (errno::ENOSPC, 3));
    c.request(cmd::TRIM, 0, 4, SIZE as u64, 1);
    assert_eq!(c.reply(), (errno::EINVAL, 4));
    assert_alive(&mut c, 5);
    assert!(dev.snapshot().iter().all(|&b| b == 0), "nothing may change");
    assert_eq!(h.server.stats().rejected_out_of_range, 4);
}

#[test]
fn unknown_commands_and_bad_flags_get_einval() {
    let (_d, h) = mem();
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    c.request(42, 0, 1, 0, 0);
    assert_eq!(c.reply(), (errno::EINVAL, 1));
    c.request(cmd::BLOCK_STATUS, 0, 2, 0, 512);
    assert_eq!(c.reply(), (errno::EINVAL, 2));
    c.request(cmd::READ, cflag::NO_HOLE, 3, 0, 512);
    assert_eq!(c.reply(), (errno::EINVAL, 3));
    c.request(cmd::WRITE_ZEROES, cflag::FAST_ZERO, 4, 0, 512);
    assert_eq!(c.reply(), (errno::EINVAL, 4));
    // A write with bad flags still has its payload consumed.
    c.request(cmd::WRITE, 0x8000, 5, 0, 4);
    c.send(b"zzzz");
    assert_eq!(c.reply(), (errno::EINVAL, 5));
    c.request(cmd::FLUSH, 0, 6, 0, 1);
    assert_eq!(c.reply(), (errno::EINVAL, 6));
    assert_alive(&mut c, 7);
    let s = h.server.stats();
    assert_eq!(s.rejected_unknown_command, 2);
    assert_eq!(s.rejected_bad_flags, 3);
    assert_eq!(s.rejected_bad_arguments, 1);
    assert_eq!(s.rejected_total, 6);
}

#[test]
fn oversized_requests() {
    let (_d, h) = mem();
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    // A read over 32 MiB is refused...
    c.request(cmd::READ, 0, 1, 0, proto::MAX_PAYLOAD_BYTES + 1);
    assert_eq!(c.reply(), (errno::EINVAL, 1));
    assert_alive(&mut c, 2);
    // ...a write over 32 MiB cannot be consumed safely: the server hangs up.
    c.request(cmd::WRITE, 0, 3, 0, 64 << 20);
    assert!(c.closed_by_server());
    assert_eq!(h.server.stats().rejected_oversized, 2);
}

#[test]
fn handshake_rejects_bad_input_and_answers_unknown_options() {
    let (_d, h) = mem();
    // Unknown client flags: dropped.
    let mut c = RawClient::connect(&h.socket);
    c.send(&0x80u32.to_be_bytes());
    assert!(c.closed_by_server());
    // Bad option magic: dropped.
    let mut c = RawClient::connect(&h.socket);
    c.send(&3u32.to_be_bytes());
    c.send(&[0x55; 16]);
    assert!(c.closed_by_server());
    // Unknown options get ERR_UNSUP and negotiation goes on; malformed GO gets ERR_INVALID.
    let mut c = RawClient::connect(&h.socket);
    c.send(&3u32.to_be_bytes());
    for o in [
        opt::STARTTLS,
        opt::STRUCTURED_REPLY,
        opt::SET_META_CONTEXT,
        99,
    ] {
        c.option(o, &[]);
        assert_eq!(c.option_reply().1, rep::ERR_UNSUP, "option {o}");
    }
    c.option(opt::GO, &[0, 0, 0, 200, b'm']);
    assert_eq!(c.option_reply().1, rep::ERR_INVALID);
    c.option(opt::GO, &[0, 0, 0, 1, b'x', 0, 0]);
    assert_eq!(c.option_reply().1, rep::ERR_UNKNOWN);
    // 100 KiB of option data is read and refused with ERR_TOO_BIG.
    c.option(99, &vec![0u8; 100 * 1024]);
    assert_eq!(c.option_reply().1, rep::ERR_TOO_BIG);
    c.option(opt::ABORT, &[]);
    assert_eq!(c.option_reply().1, rep::ACK);
    assert!(c.closed_by_server());
    // A 2 GiB option is a denial of service: dropped.
    let mut c = RawClient::connect(&h.socket);
    c.send(&3u32.to_be_bytes());
    let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&99u32.to_be_bytes());
    m.extend_from_slice(&(2u32 << 30).to_be_bytes());
    c.send(&m);
    assert!(c.closed_by_server());
    // EXPORT_NAME of an unknown export: dropped (no error reply exists for it).
    let mut c = RawClient::connect(&h.socket);
    c.send(&3u32.to_be_bytes());
    c.option(opt::EXPORT_NAME, b"missing");
    assert!(c.closed_by_server());
    // EXPORT_NAME of a known export with NO_ZEROES: 10 bytes, then transmission.
    let mut c = RawClient::connect(&h.socket);
    c.send(&3u32.to_be_bytes());
    c.option(opt::EXPORT_NAME, b"m");
    let r = c.read_n(10);
    assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), SIZE as u64);
    assert_alive(&mut c, 1);
    assert!(h.server.stats().handshakes_failed >= 5);
}

#[test]
fn random_garbage_never_takes_the_server_down() {
    let (_d, h) = mem();
    for seed in 1..40u64 {
        let junk = common::pseudo_random(64 + (seed as usize * 37) % 512, seed);
        // Garbage during negotiation.
        let mut c = RawClient::connect(&h.socket);
        let _ = std::io::Write::write_all(&mut c.s, &junk);
        drop(c);
        // Garbage after a good handshake (valid magic half the time).
        let (mut c, _, _) = RawClient::go(&h.socket, "m");
        let mut junk = junk;
        if seed % 2 == 0 {
            junk[0..4].copy_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        }
        let _ = std::io::Write::write_all(&mut c.s, &junk);
        drop(c);
    }
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    assert_alive(&mut c, 1);
}

/// A device whose reads at offset 0 wait until a write has completed.
struct Gate {
    inner: MemoryDevice,
    opened: tokio::sync::Notify,
}

impl BlockDevice for Gate {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn writable(&self) -> bool {
        true
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn read(&self, offset: u64, buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        Box::pin(async move {
            if offset == 0 {
                self.opened.notified().await;
            }
            self.inner.read(offset, buf).await
        })
    }
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult> {
        Box::pin(async move {
            let r = self.inner.write(offset, data, fua).await;
            self.opened.notify_one();
            r
        })
    }
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.inner.flush()
    }
    fn trim(&self, o: u64, l: u64, f: bool) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.inner.trim(o, l, f)
    }
    fn write_zeroes(
        &self,
        o: u64,
        l: u64,
        f: bool,
        t: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.inner.write_zeroes(o, l, f, t)
    }
}

#[test]
fn requests_are_pipelined_and_replies_may_overtake() {
    let gate = Arc::new(Gate {
        inner: MemoryDevice::new(SIZE),
        opened: tokio::sync::Notify::new(),
    });
    let h = Harness::start(vec![("g", gate.clone() as Arc<dyn BlockDevice>)]);
    let (mut c, _, _) = RawClient::go(&h.socket, "g");
    // The read cannot finish before the write that follows it on the same connection:
    // a server that handled one request at a time would never answer.
    c.request(cmd::READ, 0, 1, 0, 4);
    c.request(cmd::WRITE, 0, 2, 0, 4);
    c.send(b"pipe");
    assert_eq!(c.reply(), (0, 2), "the write's reply overtakes the read's");
    assert_eq!(c.reply(), (0, 1));
    assert_eq!(c.read_n(4), b"pipe");
    // Many requests in flight at once, all answered with their own handles.
    for i in 0..200u64 {
        c.request(cmd::WRITE, cflag::FUA, 100 + i, i * 512, 512);
        c.send(&[i as u8; 512]);
    }
    let mut seen: Vec<u64> = (0..200)
        .map(|_| c.reply())
        .map(|(e, hd)| {
            assert_eq!(e, 0);
            hd
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (100..300).collect::<Vec<_>>());
    assert_eq!(gate.inner.fua_count(), 200);
}

#[test]
fn disc_completes_in_flight_requests_then_closes() {
    let (dev, h) = mem();
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    for i in 0..16u64 {
        c.request(cmd::WRITE, 0, i, i * 4096, 4096);
        c.send(&[0xA5; 4096]);
    }
    c.request(cmd::DISC, 0, 99, 0, 0);
    for _ in 0..16 {
        assert_eq!(c.reply().0, 0);
    }
    assert!(c.closed_by_server());
    assert!(dev.snapshot()[..16 * 4096].iter().all(|&b| b == 0xA5));
}

#[test]
fn removing_an_export_closes_its_connections() {
    let (_d, h) = mem();
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    assert_alive(&mut c, 1);
    assert!(h.server.remove_export("m"));
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(c.closed_by_server());
    let mut c = RawClient::connect(&h.socket);
    c.send(&1u32.to_be_bytes());
    c.option(opt::GO, &[0, 0, 0, 1, b'm', 0, 0]);
    assert_eq!(c.option_reply().1, rep::ERR_UNKNOWN);
}

/// A device whose WRITE_ZEROES waits until the test releases it; everything else is
/// answered at once (reads return zeroes). Its size costs no memory.
struct ZeroGate {
    released: tokio::sync::Semaphore,
}

impl BlockDevice for ZeroGate {
    fn size_bytes(&self) -> u64 {
        1 << 30
    }
    fn writable(&self) -> bool {
        true
    }
    fn read(&self, _offset: u64, mut buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        buf.fill(0);
        Box::pin(std::future::ready((buf, Ok(()))))
    }
    fn write(&self, _offset: u64, data: Vec<u8>, _fua: bool) -> DeviceFuture<'_, BufResult> {
        Box::pin(std::future::ready((data, Ok(()))))
    }
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn trim(&self, _: u64, _: u64, _: bool) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn write_zeroes(
        &self,
        _: u64,
        _: u64,
        _: bool,
        _: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move {
            let _ = self.released.acquire().await.map(|p| p.forget());
            Ok(())
        })
    }
}

/// WRITE_ZEROES counts in the connection's in-flight byte budget (up to 32 MiB each:
/// what a device may keep in flight for one), although it carries no payload: with two
/// large ones running, the default 64 MiB budget is spent, and a READ behind them waits
/// until one finishes. Before, any number of them ran at once, each free.
#[test]
fn write_zeroes_count_in_the_byte_budget() {
    let dev = Arc::new(ZeroGate {
        released: tokio::sync::Semaphore::new(0),
    });
    let h = Harness::start(vec![("z", dev.clone() as Arc<dyn BlockDevice>)]);
    let (mut c, _, _) = RawClient::go(&h.socket, "z");
    c.request(cmd::WRITE_ZEROES, 0, 1, 0, 1 << 29);
    c.request(cmd::WRITE_ZEROES, 0, 2, 1 << 29, 1 << 25);
    c.request(cmd::READ, 0, 3, 0, 4096);
    c.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    let early = std::io::Read::read(&mut c.s, &mut b);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the read was answered past the budget: {early:?}"
    );
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    dev.released.add_permits(1);
    let (e, first) = c.reply();
    assert_eq!(e, 0);
    assert!(
        first == 1 || first == 2,
        "a write-zeroes finishes first: {first}"
    );
    assert_eq!(c.reply(), (0, 3), "then the read gets its budget");
    assert_eq!(c.read_n(4096), vec![0u8; 4096]);
    dev.released.add_permits(1);
    assert_eq!(c.reply().0, 0);
}

/// Connects to `socket` from a thread that runs as `uid`/`gid` with no supplementary
/// groups (raw syscalls change only the calling thread's credentials, so the test
/// process stays root), and returns what the server sent first: the greeting, or
/// nothing if it hung up.
fn connect_as(socket: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<Vec<u8>> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's own credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        let mut s = std::os::unix::net::UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = Vec::new();
        let mut b = [0u8; 18];
        let n = std::io::Read::read(&mut s, &mut b).unwrap_or(0);
        got.extend_from_slice(&b[..n]);
        Ok(got)
    })
    .join()
    .expect("client thread")
}

/// The socket is 0600 in a 0700 directory: another user cannot even connect. And if
/// those modes are loosened by mistake, the peer's credentials are checked at accept:
/// neither root nor in the configured group → closed without a greeting, counted, and
/// the server goes on; a member of the group gets in.
#[test]
fn unix_peers_are_checked_by_mode_and_by_credentials() {
    if !tandem_testkit::root_or_skip("to connect as another user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let h = Harness::start(vec![(
        "m",
        Arc::new(MemoryDevice::new(SIZE)) as Arc<dyn BlockDevice>,
    )]);
    let refused = connect_as(&h.socket, NOBODY, NOBODY);
    assert_eq!(
        refused.map_err(|e| e.kind()).unwrap_err(),
        std::io::ErrorKind::PermissionDenied,
        "the socket's mode keeps other users out"
    );
    // Someone makes the directory and the socket world-accessible.
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(h.dir.path(), 0o755);
    open(&h.socket, 0o666);
    let got = connect_as(&h.socket, NOBODY, NOBODY).unwrap();
    assert!(got.is_empty(), "greeted a stranger: {got:?}");
    assert_eq!(h.server.stats().connections_refused_credentials, 1);
    // Root still gets in, on the same server.
    let (mut c, _, _) = RawClient::go(&h.socket, "m");
    assert_alive(&mut c, 1);

    // With a group configured, its members are let in (as the kernel would by mode).
    let h = Harness::start_with(
        vec![(
            "m",
            Arc::new(MemoryDevice::new(SIZE)) as Arc<dyn BlockDevice>,
        )],
        tandem_nbd::ServerConfig {
            unix_access: tandem_nbd::UnixAccess {
                group: Some(NOBODY),
            },
            ..Default::default()
        },
    );
    open(h.dir.path(), 0o755);
    let got = connect_as(&h.socket, 12345, NOBODY).unwrap();
    assert_eq!(&got[..8], b"NBDMAGIC", "a group member is greeted");
    let got = connect_as(&h.socket, 12345, 12345);
    assert!(
        got.as_ref().map_or(true, |g| g.is_empty()),
        "not in the group: {got:?}"
    );
    assert_eq!(
        h.server.stats().connections_refused_credentials,
        0,
        "the mode said no first"
    );
}
