use super::*;

/// Regression for the precise cause of `driver_loopback` hanging in `Handshaking`: the
/// link's reader used to start inside `establish`, before `LinkUp` was queued, so a
/// `State` sent right behind the handshake could reach the loop first and be dropped
/// as a frame of an unknown link. Now nothing past the handshake is read until the
/// loop starts the link, and then that frame is the first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_of_a_link_is_read_before_the_loop_starts_it() {
    let secret = b"s3cret".to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer_secret = secret.clone();
    // Scripted initiator: its answer and the next frame leave in one write.
    let peer = tokio::spawn(async move {
        let sock = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = sock.into_split();
        let mine = [7u8; 32];
        let pre = FrameKey::preauth();
        wr.write_all(&Frame::AuthChallenge { nonce: mine }.to_bytes(&pre, 0))
            .await
            .unwrap();
        let Ok(Frame::AuthChallenge { nonce }) =
            read_frame(&mut rd, FrameType::AuthChallenge, &pre, 0).await
        else {
            panic!("no challenge");
        };
        let mac = frame::auth_response(&peer_secret, &nonce, true);
        let keys = LinkKeys::derive(&peer_secret, &mine, &nonce, true);
        let mut glued = Frame::AuthResponse { mac }.to_bytes(&pre, 1);
        glued.extend(Frame::Ping.to_bytes(&keys.send, 0));
        wr.write_all(&glued).await.unwrap();
        let Ok(Frame::AuthResponse { mac }) =
            read_frame(&mut rd, FrameType::AuthResponse, &pre, 1).await
        else {
            panic!("no answer");
        };
        assert!(frame::auth_verify(&peer_secret, &mine, false, &mac));
        (rd, wr)
    });
    let (sock, _) = listener.accept().await.unwrap();
    let (ev_tx, mut ev_rx) = mpsc::channel(16);
    establish(sock, false, secret, 7, ev_tx.clone()).await;
    let _peer_halves = peer.await.unwrap();
    let Some(Event::LinkUp(7, mut rd, wr, keys)) = ev_rx.recv().await else {
        panic!("authenticated link not handed to the loop first");
    };
    // The frame behind the handshake is still unread, and no event overtook LinkUp.
    let mut magic = [0u8; 4];
    rd.peek(&mut magic).await.unwrap();
    assert_eq!(&magic, b"TDRF", "the next frame waits in the socket");
    assert!(
        ev_rx.try_recv().is_err(),
        "nothing queued behind LinkUp yet"
    );
    // Once the loop has made it the link, it reads: the glued frame comes first.
    let mut link = Link::new(7, rd, wr, keys);
    let frame = loop {
        match link.ready().await {
            LinkIo::Read(Ok(n)) if n > 0 => {}
            _ => panic!("the link closed"),
        }
        if let Some(f) = link.next_frame().expect("a valid frame") {
            break f;
        }
    };
    assert_eq!(frame, Frame::Ping, "the glued frame is the link's first");
    drop(ev_tx);
}

/// Randomness is the kernel's or nothing: a failing source is an error, and the
/// node does not start (before, the process id stood in for it).
#[test]
fn failing_randomness_is_an_error_not_a_fallback() {
    let failed = random_bytes_from::<8>(|_| Err(getrandom::Error::UNSUPPORTED));
    assert!(matches!(failed, Err(DriverError::Random(_))), "{failed:?}");
    let a: [u8; 32] = random_bytes().unwrap();
    let b: [u8; 32] = random_bytes().unwrap();
    assert_ne!(a, b);
}

/// Large aligned writes go direct, small or unaligned ones buffered; both land, and
/// a buffered read after a direct write sees the new bytes (the kernel drops the
/// cached pages a direct write covers).
#[test]
fn direct_and_buffered_writes_land_and_read_back() {
    let dir = std::env::temp_dir().join(format!("tandem-backing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let b = open_backing(&path).unwrap();
    let mut cached = vec![0u8; 256 << 10];
    b.file.read_exact_at(&mut cached, 0).unwrap();
    // Unaligned memory: `Bytes` from a socket is rarely page-aligned.
    let big: Vec<u8> = (0..(128 << 10) + 1).map(|i| (i % 251) as u8).collect();
    b.write(&big[1..], 64 << 10).unwrap();
    b.write(&[7u8; 4096], 8192).unwrap();
    b.write(&[9u8; 512], 300 << 10).unwrap();
    let mut back = vec![0u8; 1 << 20];
    b.file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[64 << 10..192 << 10], &big[1..]);
    assert_eq!(&back[8192..12288], &[7u8; 4096][..]);
    assert_eq!(&back[300 << 10..(300 << 10) + 512], &[9u8; 512][..]);
    assert!(back[..8192].iter().all(|&x| x == 0));
    if b.direct.is_some() {
        assert!(
            b.direct_ok.load(Ordering::Relaxed),
            "direct writes kept working"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames split at every byte boundary, glued in one buffer, or corrupted reach the
/// decoder as the stream delivers them: whole frames come out in order, a partial
/// one waits, a corrupt one is an error (the loop then drops the link).
#[tokio::test]
async fn the_link_decodes_frames_however_the_stream_cuts_them() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (rd, wr) = server.into_split();
    let keys = LinkKeys::derive(b"k", &[1; 32], &[2; 32], false);
    let peer_keys = LinkKeys::derive(b"k", &[2; 32], &[1; 32], true);
    let mut link = Link::new(1, rd, wr, keys);
    let frames = vec![
        Frame::Ping,
        Frame::Data {
            id: 9,
            sector: 8,
            epoch: 1,
            fua: true,
            data: Bytes::from(vec![0xab; 4096]),
        },
        Frame::Barrier { epoch: 1 },
    ];
    let mut bytes = Vec::new();
    for (seq, f) in frames.iter().enumerate() {
        f.encode(&mut bytes, &peer_keys.send, seq as u64);
    }
    for cut in [1, 47, 48, 49, 4000, bytes.len() - 1] {
        link.recv_seq = 0;
        let (a, b) = bytes.split_at(cut);
        link.rbuf.extend_from_slice(a);
        let mut got = Vec::new();
        while let Some(f) = link.next_frame().unwrap() {
            got.push(f);
        }
        link.rbuf.extend_from_slice(b);
        while let Some(f) = link.next_frame().unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames, "cut at {cut}");
        assert!(link.rbuf.is_empty());
    }
    let mut bad = bytes.clone();
    // A flipped bit in the second frame's data: its MAC no longer verifies.
    bad[2 * HEADER_LEN + 100] ^= 0x10;
    link.recv_seq = 0;
    link.rbuf.extend_from_slice(&bad);
    assert_eq!(link.next_frame().unwrap(), Some(Frame::Ping));
    assert!(link.next_frame().is_err(), "a corrupt frame is an error");
    // The same frames again, replayed behind the first ones: each is in the wrong
    // place of the stream now, so the first already fails.
    link.rbuf.clear();
    link.recv_seq = frames.len() as u64;
    link.rbuf.extend_from_slice(&bytes);
    assert!(link.next_frame().is_err(), "a replayed frame is an error");
    // Output queued on the link leaves with `flush`, in order — large data frames
    // from where their data lies, the rest encoded.
    let mut out_frames = frames.clone();
    out_frames.insert(
        1,
        Frame::ResyncData {
            id: 3,
            sector: 0,
            data: Bytes::from(vec![0x5a; 192 << 10]),
        },
    );
    let mut sent = Vec::new();
    for (seq, f) in out_frames.iter().enumerate() {
        link.send(f);
        f.encode(&mut sent, &peer_keys.recv, seq as u64);
    }
    assert_eq!(link.out.len(), 2, "small frames, then the big frame's data");
    let expect = sent.len();
    let mut client = client;
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; expect];
        client.read_exact(&mut got).await.unwrap();
        got
    });
    while !link.out.is_empty() || !link.wbuf.is_empty() {
        link.flush().unwrap();
        if !link.out.is_empty() {
            link.wr.writable().await.unwrap();
        }
    }
    assert_eq!(reader.await.unwrap(), sent);
}
