//! Two real nodes on 127.0.0.1: backing files, internal metadata, authenticated TCP link.
//! Writes on the primary appear on the secondary; after a disconnect only the dirty
//! blocks are resynced (counted) and the backing files end identical.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tandem_disk::core::{Config, ConnState, DiskState, Status};
use tandem_disk::driver::{DriverConfig, DriverHandle, start};
use tandem_disk::meta::{MetaLocation, MetaStore};
use tandem_wire::frame::{self, Frame, FrameKey, HEADER_LEN, Header, StateReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tandem-node-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn backing(dir: &Path, name: &str, node_id: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(32 << 20).unwrap();
    MetaStore::create(&p, &MetaLocation::Internal, 61, node_id, false).unwrap();
    p
}

async fn wait_for(node: &DriverHandle, what: &str, ok: impl Fn(&Status) -> bool) -> Status {
    for _ in 0..600 {
        let s = node.status().await.unwrap();
        if ok(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}: {:?}",
        node.status().await.unwrap()
    );
}

fn in_sync(s: &Status) -> bool {
    s.connection == ConnState::Connected
        && s.disk_state == DiskState::UpToDate
        && s.peer_disk_state == Some(DiskState::UpToDate)
        && s.out_of_sync_bytes == 0
}

fn data_of(p: &Path, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(p).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, 0).unwrap();
    b
}

async fn pair(dir: &Path, secret_b: &[u8]) -> (DriverHandle, DriverHandle, PathBuf, PathBuf) {
    let (pa, pb) = (free_port(), free_port());
    let a = backing(dir, "a.img", 1);
    let b = backing(dir, "b.img", 2);
    let cfg = |backing: &PathBuf, listen, peer, secret: &[u8]| DriverConfig {
        backing: backing.clone(),
        meta: MetaLocation::Internal,
        listen,
        peer,
        secret: secret.to_vec(),
        connect_interval: Duration::from_secs(1),
        core: Config::default(),
    };
    let na = start(cfg(&a, pa, pb, b"shared secret")).await.unwrap();
    let nb = start(cfg(&b, pb, pa, secret_b)).await.unwrap();
    (na, nb, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_reconnect_resyncs_only_dirty_blocks() {
    let dir = TempDir::new("replicate");
    let (a, b, fa, fb) = pair(&dir.0, b"shared secret").await;
    let size = a.size_bytes();
    wait_for(&a, "link up", |s| s.connection == ConnState::Connected).await;
    // Initial full sync from the node declared up to date.
    a.promote(true).await.unwrap().unwrap();
    wait_for(&a, "initial sync", in_sync).await;
    wait_for(&b, "initial sync (peer)", in_sync).await;

    // 4 MiB on the primary, acknowledged under protocol C: on the secondary's file.
    for i in 0..64u64 {
        let data = Bytes::from(vec![(i as u8).wrapping_add(1); 64 << 10]);
        let ack = a.write(i * (64 << 10), data, false).await.unwrap().unwrap();
        assert!(ack.replicated);
    }
    a.flush().await.unwrap().unwrap();
    let da = data_of(&fa, 4 << 20);
    assert_eq!(
        da,
        data_of(&fb, 4 << 20),
        "secondary holds the primary's writes"
    );

    // Disconnect, dirty 8 scattered blocks and one 64 KiB run, reconnect.
    // The primary's link goes: I/O is suspended and the node asks for the peer to be
    // outdated (resource-and-stonith, the core's default). The test plays the cluster:
    // the peer outdates itself (answered once durable), the primary hears of it.
    a.disconnect().await.unwrap();
    wait_for(&a, "standalone", |s| s.connection == ConnState::StandAlone).await;
    let mut link = a.link();
    let asked = tokio::time::timeout(
        Duration::from_secs(10),
        link.wait_for(|l| l.suspended && l.fence_peer_requests > 0),
    )
    .await
    .expect("the primary asked for its peer to be outdated")
    .map(|l| *l)
    .unwrap();
    assert_eq!(asked.fence_peer_requests, 1);
    b.outdate().await.unwrap().unwrap();
    assert_eq!(
        b.status().await.unwrap().disk_state,
        tandem_disk::core::DiskState::Outdated
    );
    a.peer_outdated().await.unwrap();
    // The link state is published at the end of the loop's pass, which may come after
    // the answer above reaches this task: wait for it rather than look once.
    tokio::time::timeout(Duration::from_secs(5), link.wait_for(|l| !l.suspended))
        .await
        .expect("I/O resumed once the peer was outdated")
        .unwrap();
    let mut dirty = 0;
    for k in 0..8u64 {
        let off = (5 << 20) + k * (1 << 20);
        let ack = a
            .write(off, Bytes::from(vec![0xee; 4096]), false)
            .await
            .unwrap()
            .unwrap();
        assert!(!ack.replicated, "no peer while disconnected");
        dirty += 4096;
    }
    a.write(20 << 20, Bytes::from(vec![0xdd; 64 << 10]), false)
        .await
        .unwrap()
        .unwrap();
    dirty += 64 << 10;
    let st = a.status().await.unwrap();
    assert_eq!(st.out_of_sync_bytes, dirty);
    let moved_before = b.status().await.unwrap().resync_moved_bytes;
    a.connect(false).await.unwrap();
    wait_for(&a, "resync", in_sync).await;
    let sb = wait_for(&b, "resync (peer)", in_sync).await;
    let moved = sb.resync_moved_bytes - moved_before;
    eprintln!("dirtied {dirty} bytes, resync moved {moved} bytes");
    assert_eq!(moved, dirty, "only the dirty blocks move");
    assert_eq!(
        data_of(&fa, size),
        data_of(&fb, size),
        "backing files identical"
    );

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_write_has_its_activity_log_resynced() {
    let dir = TempDir::new("kill");
    let (pa, pb) = (free_port(), free_port());
    let fa = backing(&dir.0, "a.img", 1);
    let fb = backing(&dir.0, "b.img", 2);
    let cfg = |backing: &PathBuf, listen, peer| DriverConfig {
        backing: backing.clone(),
        meta: MetaLocation::Internal,
        listen,
        peer,
        secret: b"k".to_vec(),
        connect_interval: Duration::from_secs(1),
        core: Config::default(),
    };
    let a = start(cfg(&fa, pa, pb)).await.unwrap();
    let b = start(cfg(&fb, pb, pa)).await.unwrap();
    let size = a.size_bytes();
    wait_for(&a, "link up", |s| s.connection == ConnState::Connected).await;
    a.promote(true).await.unwrap().unwrap();
    wait_for(&b, "initial sync", in_sync).await;
    // Writers in flight when the primary dies without demoting (kill -9).
    let mut writers = Vec::new();
    for q in 0..4u64 {
        let a = a.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..1000u64 {
                let off = ((q * 1000 + i) * 4096 * 7) % (size - 4096);
                let off = off / 4096 * 4096;
                if a.write(off, Bytes::from(vec![q as u8 + 1; 4096]), false)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.shutdown().await.unwrap();
    for w in writers {
        let _ = w.await;
    }
    // Restart from the same files: metadata says it was primary → crashed primary.
    let a = start(cfg(&fa, pa, pb)).await.unwrap();
    let sa = wait_for(&a, "resync after the crash", in_sync).await;
    wait_for(&b, "resync after the crash (peer)", in_sync).await;
    eprintln!(
        "crashed primary: decision {:?}, resynced {} bytes (AL bound {} bytes)",
        sa.last_decision,
        sa.resync_moved_bytes,
        61u64 * (4 << 20)
    );
    assert!(
        sa.resync_moved_bytes > 0,
        "the activity-log extents were resynced"
    );
    assert!(sa.resync_moved_bytes <= 61 * (4 << 20));
    assert_eq!(data_of(&fa, size), data_of(&fb, size), "sides identical");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_never_connects() {
    let dir = TempDir::new("secret");
    let (a, b, _, _) = pair(&dir.0, b"another secret").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in [&a, &b] {
        let s = n.status().await.unwrap();
        assert_eq!(s.connection, ConnState::Connecting, "{s:?}");
        assert!(s.peer_role.is_none());
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

async fn read_frame(rd: &mut tokio::net::tcp::OwnedReadHalf, key: &FrameKey, seq: u64) -> Frame {
    let mut h = [0u8; HEADER_LEN];
    rd.read_exact(&mut h).await.unwrap();
    let header = Header::decode(&h).unwrap();
    let mut payload = vec![0u8; header.length as usize];
    rd.read_exact(&mut payload).await.unwrap();
    Frame::decode_payload(&header, &h, &payload, key, seq).unwrap()
}

/// A scripted initiator's side of an authenticated connection to a node: the halves,
/// and the session keys (frames we send, frames we receive).
struct Scripted {
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    send: FrameKey,
    recv: FrameKey,
}

/// Dials `addr` and passes the challenge/response with `secret`, as a real initiator
/// would; `extra` is sent in the same write as the answer (already encoded).
async fn authenticate(
    addr: SocketAddr,
    secret: &[u8],
    mine: [u8; 32],
    extra: impl FnOnce(&FrameKey) -> Vec<u8>,
) -> Scripted {
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let pre = FrameKey::preauth();
    wr.write_all(&Frame::AuthChallenge { nonce: mine }.to_bytes(&pre, 0))
        .await
        .unwrap();
    let Frame::AuthChallenge { nonce } = read_frame(&mut rd, &pre, 0).await else {
        panic!("no challenge");
    };
    let send = FrameKey::session(secret, &mine, &nonce, true);
    let recv = FrameKey::session(secret, &mine, &nonce, false);
    let mut glued = Frame::AuthResponse {
        mac: frame::auth_response(secret, &nonce, true),
    }
    .to_bytes(&pre, 1);
    glued.extend(extra(&send));
    wr.write_all(&glued).await.unwrap();
    let Frame::AuthResponse { mac } = read_frame(&mut rd, &pre, 1).await else {
        panic!("no answer");
    };
    assert!(frame::auth_verify(secret, &mine, false, &mac));
    Scripted { rd, wr, send, recv }
}

/// A node that accepts (its peer address sorts below any other), for scripted peers.
async fn accepting_node(dir: &Path, secret: &[u8]) -> (DriverHandle, SocketAddr) {
    let listen = free_port();
    let node = start(DriverConfig {
        backing: backing(dir, "n.img", 1),
        meta: MetaLocation::Internal,
        listen,
        peer: "127.0.0.1:1".parse().unwrap(),
        secret: secret.to_vec(),
        connect_interval: Duration::from_secs(1),
        core: Config::default(),
    })
    .await
    .unwrap();
    (node, listen)
}

/// Reads until the node closes the connection; panics if it is still open after
/// `within` (a node that waits for more bytes keeps it open).
async fn closed_within(rd: &mut tokio::net::tcp::OwnedReadHalf, within: Duration) {
    let mut sink = vec![0u8; 64 << 10];
    let closed = tokio::time::timeout(within, async {
        loop {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node kept the connection open");
}

fn peer_state(size_bytes: u64) -> Frame {
    Frame::State(StateReport {
        protocol: b'C',
        role: 0,
        disk: DiskState::Inconsistent as u8,
        node_id: 99,
        generations: [4, 0, 0, 0],
        bitmap_bits: 0,
        size_bytes,
        flags: 0,
    })
}

/// Frames after the handshake carry a MAC under the session key and their sequence
/// number: a frame that was only checksummed (what an attacker on the path could make
/// before: here, tagged under the public pre-authentication key), one replayed, and one
/// sent under another connection's key each make the node drop the link. A correctly
/// keyed frame in the right place is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_fails_its_mac_drops_the_link() {
    let dir = TempDir::new("mac");
    let (node, listen) = accepting_node(&dir.0, b"m").await;
    let state = peer_state(node.size_bytes());
    // Accepted: sealed with the session key as frame 0.
    let mut ok = authenticate(listen, b"m", [1; 32], |k| state.to_bytes(k, 0)).await;
    wait_for(&node, "peer state taken", |s| s.peer_role.is_some()).await;
    // The same frame again (a replay, frame 1 now) drops the link.
    ok.wr.write_all(&state.to_bytes(&ok.send, 0)).await.unwrap();
    closed_within(&mut ok.rd, Duration::from_secs(3)).await;
    wait_for(&node, "link down after a replay", |s| s.peer_role.is_none()).await;
    let (send_key, recv_key) = (ok.send.clone(), ok.recv.clone());
    assert_ne!(send_key, recv_key);
    drop(ok);
    for (what, forge) in [
        ("checksum only", FrameKey::preauth()),
        ("another connection's key", send_key),
    ] {
        let mut s = authenticate(listen, b"m", [2; 32], |_| state.to_bytes(&forge, 0)).await;
        closed_within(&mut s.rd, Duration::from_secs(3)).await;
        let st = node.status().await.unwrap();
        assert!(st.peer_role.is_none(), "{what}: frame taken: {st:?}");
    }
    node.shutdown().await.unwrap();
}

/// Before authentication a header may not ask for more than its type can hold: an
/// `AuthChallenge` announcing 1 MiB is refused from its 48 header bytes, and the node
/// hangs up at once instead of waiting for (and allocating) the megabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_auth_frame_is_refused_before_its_payload() {
    let dir = TempDir::new("oversized");
    let (node, listen) = accepting_node(&dir.0, b"o").await;
    let (mut rd, mut wr) = tokio::net::TcpStream::connect(listen)
        .await
        .unwrap()
        .into_split();
    let mut h = Frame::AuthChallenge { nonce: [0; 32] }.to_bytes(&FrameKey::preauth(), 0);
    h.truncate(HEADER_LEN);
    h[8..12].copy_from_slice(&(1u32 << 20).to_be_bytes());
    wr.write_all(&h).await.unwrap();
    // The node's own challenge, then the end: well before its 5 s handshake timeout.
    closed_within(&mut rd, Duration::from_secs(2)).await;
    node.shutdown().await.unwrap();
}

/// Connections that never authenticate are bounded on the accepting side: beyond four
/// at once, the node closes new ones without a word (no challenge), and once the
/// silent ones time out, a real peer still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_bounded() {
    let dir = TempDir::new("preauth");
    let (node, listen) = accepting_node(&dir.0, b"p").await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        let (mut rd, wr) = tokio::net::TcpStream::connect(listen)
            .await
            .unwrap()
            .into_split();
        // Each is being authenticated: the node sent its challenge.
        read_frame(&mut rd, &FrameKey::preauth(), 0).await;
        silent.push((rd, wr));
    }
    for _ in 0..3 {
        let (mut rd, _wr) = tokio::net::TcpStream::connect(listen)
            .await
            .unwrap()
            .into_split();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), rd.read(&mut b))
            .await
            .expect("an excess connection is closed at once");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "an excess connection got bytes"
        );
    }
    // The silent ones are dropped by the handshake timeout (5 s); then a peer connects.
    for (rd, _) in &mut silent {
        closed_within(rd, Duration::from_secs(7)).await;
    }
    let state = peer_state(node.size_bytes());
    let _peer = authenticate(listen, b"p", [3; 32], |k| state.to_bytes(k, 0)).await;
    wait_for(&node, "peer state taken", |s| s.peer_role.is_some()).await;
    node.shutdown().await.unwrap();
}

/// Regression for the 30 s hang in `Handshaking`: a peer that sends its `State` in the
/// same TCP write as its authentication answer (the race the real peer wins when it gets
/// its own `LinkUp` first). The node used to be able to read that frame before it had
/// registered the link and drop it. A scripted peer does this 20 times in a row; each
/// time the node must take the state (peer role known) and answer with its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_right_behind_the_handshake_is_never_lost() {
    let dir = TempDir::new("glued");
    // "127.0.0.1:1" sorts below any other port: the node accepts, we dial.
    let (node, listen) = accepting_node(&dir.0, b"g").await;
    let state = peer_state(node.size_bytes());
    for round in 0..20 {
        let mut peer =
            authenticate(listen, b"g", [round as u8; 32], |k| state.to_bytes(k, 0)).await;
        let mut seq = 0;
        loop {
            let f = read_frame(&mut peer.rd, &peer.recv, seq).await;
            seq += 1;
            if let Frame::State(s) = f {
                assert_eq!(s.node_id, 1);
                break;
            }
        }
        wait_for(&node, &format!("peer state taken (round {round})"), |s| {
            s.peer_role.is_some()
        })
        .await;
        drop(peer);
        wait_for(&node, "link down", |s| {
            s.connection == ConnState::Connecting
        })
        .await;
    }
    node.shutdown().await.unwrap();
}

/// Figures for docs/disk.md (not a timed assertion):
/// `cargo test --release -p tandem-disk --test node_loopback -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_loopback_throughput() {
    let dir = TempDir::new("bench");
    let (pa, pb) = (free_port(), free_port());
    let mk = |name: &str, id| {
        let p = dir.0.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(264 << 20).unwrap();
        MetaStore::create(&p, &MetaLocation::Internal, 257, id, false).unwrap();
        p
    };
    let (fa, fb) = (mk("a.img", 1), mk("b.img", 2));
    let cfg = |backing: &PathBuf, listen, peer| DriverConfig {
        backing: backing.clone(),
        meta: MetaLocation::Internal,
        listen,
        peer,
        secret: b"s".to_vec(),
        connect_interval: Duration::from_secs(1),
        core: Config::default(),
    };
    let a = start(cfg(&fa, pa, pb)).await.unwrap();
    let b = start(cfg(&fb, pb, pa)).await.unwrap();
    wait_for(&a, "link", |s| s.connection == ConnState::Connected).await;
    let size = a.size_bytes();
    #[allow(clippy::disallowed_methods)]
    let t = std::time::Instant::now();
    a.promote(true).await.unwrap().unwrap();
    wait_for(&b, "full sync", in_sync).await;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "full sync of {} MiB: {:.2} s = {:.0} MiB/s",
        size >> 20,
        secs,
        (size >> 20) as f64 / secs
    );
    for (name, len, qd, total) in [
        (
            "1 MiB sequential writes, QD8",
            1u64 << 20,
            8u64,
            256u64 << 20,
        ),
        ("4 KiB random writes, QD16", 4096, 16, 32 << 20),
        ("4 KiB random writes, QD1", 4096, 1, 4 << 20),
    ] {
        #[allow(clippy::disallowed_methods)]
        let t = std::time::Instant::now();
        let per = total / len / qd;
        let mut tasks = Vec::new();
        for q in 0..qd {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let mut x: u64 = q * 7919 + 1;
                for i in 0..per {
                    let off = if len == 4096 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % (size / 4096)) * 4096
                    } else {
                        ((q * per + i) * len) % size
                    };
                    a.write(off, Bytes::from(vec![q as u8; len as usize]), false)
                        .await
                        .unwrap()
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        let n = per * qd;
        eprintln!(
            "protocol C, {name}: {:.0} MiB/s, {:.0} IOPS",
            (n * len) as f64 / secs / (1 << 20) as f64,
            n as f64 / secs
        );
    }
    a.flush().await.unwrap().unwrap();
    assert_eq!(data_of(&fa, size), data_of(&fb, size));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The dialling side retries a peer that refuses it after 0.5 s, then waits twice as
/// long each time, up to `connect_interval`: a peer that stays away is not hammered,
/// one that comes back quickly is found quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_peer_is_redialled_with_growing_waits_up_to_connect_interval() {
    let dir = TempDir::new("dial");
    // The dialler is the side whose address sorts lower.
    let (mut a, mut b) = (free_port(), free_port());
    if a.to_string() > b.to_string() {
        std::mem::swap(&mut a, &mut b);
    }
    // A "peer" that accepts and hangs up at once: every dial fails its handshake.
    let fake = tokio::net::TcpListener::bind(b).await.unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = attempts.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((sock, _)) = fake.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(sock);
        }
    });
    let node = start(DriverConfig {
        backing: backing(&dir.0, "a.img", 1),
        meta: MetaLocation::Internal,
        listen: a,
        peer: b,
        secret: b"k".to_vec(),
        connect_interval: Duration::from_secs(2),
        core: Config::default(),
    })
    .await
    .unwrap();
    // Dials at about 0, 0.5, 1.5, 3.5, 5.5 s (a fixed 0.5 s would be 12 by 5.8 s).
    tokio::time::sleep(Duration::from_millis(5800)).await;
    let n = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((4..=7).contains(&n), "{n} dials in 5.8 s");
    node.shutdown().await.unwrap();
    acceptor.abort();
}

/// A refused dial (the peer's machine is up, its disk service not listening yet: a
/// daemon restarting, a node back from a power cut) is retried after 0.5 s, not after
/// doubling waits: the link is up within a dial wait of the peer listening again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_peer_is_redialled_at_the_first_wait() {
    let dir = TempDir::new("refused");
    let (mut a, mut b) = (free_port(), free_port());
    if a.to_string() > b.to_string() {
        std::mem::swap(&mut a, &mut b);
    }
    let node = start(DriverConfig {
        backing: backing(&dir.0, "a.img", 1),
        meta: MetaLocation::Internal,
        listen: a,
        peer: b,
        secret: b"k".to_vec(),
        connect_interval: Duration::from_secs(10),
        core: Config::default(),
    })
    .await
    .unwrap();
    // 4 s of refusals: doubling waits would dial next at 7.5 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let listening = tokio::net::TcpListener::bind(b).await.unwrap();
    let dialled = tokio::time::timeout(Duration::from_secs(2), listening.accept()).await;
    assert!(
        dialled.is_ok(),
        "not dialled within 2 s of the peer listening again"
    );
    node.shutdown().await.unwrap();
}
