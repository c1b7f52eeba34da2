//! Serve one file (or an in-memory disk) over NBD until interrupted.
//!
//! ```text
//! nbd-serve --name NAME (--file PATH | --memory-mib N) [--socket PATH] [--tcp ADDR] [--read-only]
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use tandem_nbd::{BlockDevice, FileDevice, MemoryDevice, Server, ServerConfig};

fn usage() -> ! {
    eprintln!(
        "usage: nbd-serve --name NAME (--file PATH | --memory-mib N) [--socket PATH] [--tcp ADDR] [--read-only]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = None;
    let mut file = None;
    let mut memory_mib: Option<usize> = None;
    let mut socket = None;
    let mut tcp = None;
    let mut read_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--name" => name = Some(val()),
            "--file" => file = Some(PathBuf::from(val())),
            "--memory-mib" => memory_mib = Some(val().parse()?),
            "--socket" => socket = Some(PathBuf::from(val())),
            "--tcp" => tcp = Some(val()),
            "--read-only" => read_only = true,
            _ => usage(),
        }
    }
    let name = name.unwrap_or_else(|| usage());
    let device: Arc<dyn BlockDevice> = match (file, memory_mib) {
        (Some(f), None) => Arc::new(FileDevice::open(&f, read_only)?),
        (None, Some(m)) => {
            let d = MemoryDevice::new(m << 20);
            d.set_writable(!read_only);
            Arc::new(d)
        }
        _ => usage(),
    };
    let server = Server::new(ServerConfig::default());
    server.add_export(&name, "nbd-serve", device)?;
    let socket = socket.unwrap_or_else(|| tandem_nbd::default_socket_path(&name));
    let listener = tandem_nbd::bind_unix(&socket, &tandem_nbd::UnixAccess::default()).await?;
    eprintln!("serving {name} on {}", socket.display());
    if let Some(addr) = tcp {
        let l = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("serving {name} on tcp {addr}");
        tokio::spawn(server.clone().serve_tcp(l, Some(name.clone())));
    }
    let s = server.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.shutdown();
    });
    server.clone().serve_unix(listener, Some(name)).await?;
    eprintln!("{:?}", server.stats());
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
