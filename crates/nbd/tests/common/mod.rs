//! Shared harness: a server on its own runtime, a Unix socket in a temp dir, a raw client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_nbd::proto::{self, RequestHeader};
use tandem_nbd::{
    BlockDevice, BufResult, Capabilities, DeviceError, DeviceFuture, Server, ServerConfig,
};

/// A running server; dropping it shuts the server down and removes the temp dir.
pub struct Harness {
    pub server: Arc<Server>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Harness {
    /// Serve `exports` on one Unix socket whose default export is the first one.
    pub fn start(exports: Vec<(&str, Arc<dyn BlockDevice>)>) -> Harness {
        Harness::start_with(exports, ServerConfig::default())
    }

    /// As [`Harness::start`], with a server configuration of the test's own.
    pub fn start_with(exports: Vec<(&str, Arc<dyn BlockDevice>)>, config: ServerConfig) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("nbd.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let access = config.unix_access;
        let server = Server::new(config);
        let default = exports.first().map(|(n, _)| n.to_string());
        for (name, dev) in exports {
            server
                .add_export(name, "test export", dev)
                .expect("add export");
        }
        let listener = runtime
            .block_on(tandem_nbd::bind_unix(&socket, &access))
            .expect("bind");
        runtime.spawn(server.clone().serve_unix(listener, default));
        Harness {
            server,
            socket,
            dir,
            runtime: Some(runtime),
        }
    }

    /// Also listen on TCP at 127.0.0.1 (a free port); returns the port.
    pub fn listen_tcp(&self, default_export: &str) -> u16 {
        let rt = self.runtime.as_ref().expect("runtime");
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind tcp");
        let port = l.local_addr().expect("local addr").port();
        rt.spawn(
            self.server
                .clone()
                .serve_tcp(l, Some(default_export.to_string())),
        );
        port
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Make a zero-filled backing file of `size` bytes.
pub fn backing_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create backing file");
    f.set_len(size).expect("size backing file");
}

/// The external clients must be installed; CI fails loudly, a developer box skips.
pub fn have_tool(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    tandem_testkit::skip_unless(ok, &format!("{tool} is not installed"))
}

/// Run a command, returning its output; panics with the command line if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if !out.status.success() {
        eprintln!(
            "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A device wrapper that counts FUA requests and flushes, delegating everything else.
pub struct Counting<D> {
    pub inner: D,
    pub fua: AtomicU64,
    pub flushes: AtomicU64,
}

impl<D> Counting<D> {
    pub fn new(inner: D) -> Self {
        Counting {
            inner,
            fua: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }
    pub fn fua(&self) -> u64 {
        self.fua.load(Ordering::SeqCst)
    }
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl<D: BlockDevice> BlockDevice for Counting<D> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn read(&self, offset: u64, buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult> {
        if fua {
            self.fua.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
    fn trim(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.inner.trim(offset, length, fua)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        may_trim: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        if fua {
            self.fua.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write_zeroes(offset, length, fua, may_trim)
    }
}

/// A hand-rolled client speaking raw bytes, for malformed-input tests.
pub struct RawClient {
    pub s: UnixStream,
}

impl RawClient {
    /// Connect and read the 18-byte greeting.
    pub fn connect(socket: &Path) -> RawClient {
        let s = UnixStream::connect(socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = RawClient { s };
        let g = c.read_n(18);
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        c
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send");
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.s.read_exact(&mut b).expect("read");
        b
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout;
    /// a timeout or stray data means it did not.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        }
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m);
    }

    /// Read one option reply: (option, type, data).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read_n(20);
        assert_eq!(
            u64::from_be_bytes(h[0..8].try_into().unwrap()),
            proto::OPTION_REPLY_MAGIC
        );
        let o = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let t = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let n = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        (o, t, self.read_n(n))
    }

    /// Fixed-newstyle handshake and NBD_OPT_GO; returns (size, transmission flags).
    pub fn go(socket: &Path, export: &str) -> (RawClient, u64, u16) {
        let mut c = RawClient::connect(socket);
        c.send(&1u32.to_be_bytes());
        let mut d = (export.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        c.option(proto::opt::GO, &d);
        let (mut size, mut flags) = (0, 0);
        loop {
            let (_, t, data) = c.option_reply();
            if t == proto::rep::ACK {
                break;
            }
            assert_eq!(t, proto::rep::INFO, "unexpected reply type {t:#x}");
            if data[0..2] == [0, 0] {
                size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
            }
        }
        (c, size, flags)
    }

    pub fn request(&mut self, kind: u16, flags: u16, handle: u64, offset: u64, length: u32) {
        let h = RequestHeader {
            flags,
            kind,
            handle,
            offset,
            length,
        };
        self.send(&proto::encode_request_header(&h));
    }

    /// Read a simple reply header: (error, handle).
    pub fn reply(&mut self) -> (u32, u64) {
        let b = self.read_n(16);
        assert_eq!(
            u32::from_be_bytes(b[0..4].try_into().unwrap()),
            proto::SIMPLE_REPLY_MAGIC
        );
        (
            u32::from_be_bytes(b[4..8].try_into().unwrap()),
            u64::from_be_bytes(b[8..16].try_into().unwrap()),
        )
    }
}
