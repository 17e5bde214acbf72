//! The replication stream's HTTP/2 transport end to end: `replite::http`'s client against its
//! server, first over real loopback TCP, then over turmoil's simulated network (partitions,
//! slow links, hosts that never answer). The transport only moves bytes, so these tests speak
//! in bytes: numbered records one way, numbered acknowledgements the other.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use replite::http::{
    CONNECT_TIMEOUT, ConnectError, DownstreamConn, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, StreamError,
    StreamServerEvent, UpstreamConn, connect, serve, stream_routes,
};
use replite_core::node::DownstreamId;
use replite_core::stream::{
    DbName, Extensions, HEADER_EXTENSIONS, HEADER_NODE_ID, MAX_POS_MAP_ENTRIES, PosMap, encode_pos_map,
};
use replite_core::{Checksum, NodeId, Pos, TxId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The replica's id in every test.
const REPLICA: NodeId = NodeId(0x0123_4567_89AB_CDEF);
/// Longest any single wait in a loopback test may take before the test fails (not a sleep:
/// every wait ends as soon as what it waits for happens).
const STEP: Duration = Duration::from_secs(20);

fn pos_map() -> Vec<u8> {
    let map: PosMap = [
        (DbName::new("a.db").expect("valid"), Pos::new(TxId(7), Checksum(0x8000_0000_0000_0007))),
        (DbName::new("b.db").expect("valid"), Pos::ZERO),
    ]
    .into_iter()
    .collect();
    encode_pos_map(&map)
}

/// Record `seq`: its number, then `len - 8` bytes that depend on it, so a byte out of place
/// anywhere shows.
fn record(seq: u64, len: usize) -> Bytes {
    let mut out = seq.to_be_bytes().to_vec();
    out.extend((0..len - 8).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)));
    Bytes::from(out)
}

fn records(count: u64, len: usize) -> Vec<u8> {
    (0..count).flat_map(|seq| record(seq, len)).collect()
}

// ---------------------------------------------------------------------------------------------
// Loopback TCP

struct Primary {
    url: String,
    events: mpsc::UnboundedReceiver<StreamServerEvent>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

async fn start_primary() -> Primary {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    let (tx, events) = mpsc::unbounded_channel();
    // The daemon adds its other routes to the same router; this one stands for them.
    let router = stream_routes(tx).route("/info", axum::routing::get(|| async { "info" }));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, router, async move {
        let _ = stopped.await;
    }));
    Primary { url, events, stop: Some(stop), served }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<StreamServerEvent>) -> StreamServerEvent {
    timeout(STEP, events.recv()).await.expect("a server event in time").expect("the router is alive")
}

async fn expect_opened(events: &mut mpsc::UnboundedReceiver<StreamServerEvent>) -> DownstreamConn {
    match next_event(events).await {
        StreamServerEvent::Opened(conn) => conn,
        other => panic!("expected Opened, got {other:?}"),
    }
}

/// Collects `Data` for `id` until its `Closed`; returns the bytes.
async fn data_until_closed(events: &mut mpsc::UnboundedReceiver<StreamServerEvent>, id: DownstreamId) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match next_event(events).await {
            StreamServerEvent::Data { id: of, bytes } if of == id => got.extend(bytes),
            StreamServerEvent::Closed { id: of } if of == id => return got,
            other => panic!("unexpected event {other:?}"),
        }
    }
}

type Incoming = mpsc::Receiver<Result<Bytes, StreamError>>;

/// Reads `incoming` to its clean end; returns the bytes.
async fn read_to_end(incoming: &mut Incoming) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(item) = timeout(STEP, incoming.recv()).await.expect("stream bytes in time") {
        got.extend_from_slice(&item.expect("the stream does not break"));
    }
    got
}

/// Reads exactly `len` bytes from `incoming`.
async fn read_exactly(incoming: &mut Incoming, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let item = timeout(STEP, incoming.recv()).await.expect("stream bytes in time");
        got.extend_from_slice(&item.expect("the stream is open").expect("the stream does not break"));
    }
    assert_eq!(got.len(), len, "no more than was sent");
    got
}

#[tokio::test]
async fn replica_opens_a_stream_and_the_server_sees_its_id_extensions_and_position_map() {
    let mut primary = start_primary().await;
    let up = connect(&primary.url, REPLICA, Extensions::ALL, pos_map()).await.expect("stream opens");
    let conn = expect_opened(&mut primary.events).await;
    assert_eq!(conn.peer, REPLICA);
    assert_eq!(conn.ext, Extensions::ALL);
    assert_eq!(conn.body, pos_map());
    assert_eq!(up.ext, Extensions::ALL, "the primary agrees to every extension it knows");

    let only_ack = Extensions { epoch: false, ack: true };
    let up2 = connect(&primary.url, REPLICA, only_ack, pos_map()).await.expect("second stream opens");
    let conn2 = expect_opened(&mut primary.events).await;
    assert_eq!((conn2.ext, up2.ext), (only_ack, only_ack));
    assert_ne!(conn.id, conn2.id, "every stream has its own id");
}

#[tokio::test]
async fn frames_and_acknowledgements_flow_both_ways_in_order() {
    const FRAMES: u64 = 400;
    const FRAME_LEN: usize = 4096; // 1.6 MiB in all
    const ACKS: u64 = 1000;
    const ACK_LEN: usize = 24;
    let mut primary = start_primary().await;
    let up = connect(&primary.url, REPLICA, Extensions::ALL, pos_map()).await.expect("stream opens");
    let UpstreamConn { mut incoming, outgoing, .. } = up;
    let conn = expect_opened(&mut primary.events).await;

    let frames = conn.frames;
    let sending = tokio::spawn(async move {
        for seq in 0..FRAMES {
            frames.send(record(seq, FRAME_LEN)).await.expect("the response is open");
        }
        frames
    });
    let acking = tokio::spawn(async move {
        for seq in 0..ACKS {
            outgoing.send(record(seq, ACK_LEN)).await.expect("the request body is open");
        }
        // Dropping the sender ends the request body: with `ack`, the stream is over.
    });

    let received = read_exactly(&mut incoming, FRAMES as usize * FRAME_LEN).await;
    assert!(received == records(FRAMES, FRAME_LEN), "frames arrive complete and in order");
    let acked = data_until_closed(&mut primary.events, conn.id).await;
    assert!(acked == records(ACKS, ACK_LEN), "acknowledgements arrive complete and in order");
    timeout(STEP, acking).await.expect("acker done").expect("acker ok");
    // Dropping the last sender ends the response.
    drop(timeout(STEP, sending).await.expect("sender done").expect("sender ok"));
    assert!(read_to_end(&mut incoming).await.is_empty());
    assert!(primary.events.try_recv().is_err(), "Closed is the last event of a stream");
}

#[tokio::test]
async fn a_replica_that_does_not_read_holds_the_primary_back_with_bounded_buffering() {
    const FRAME_LEN: usize = 64 * 1024;
    // Channels, HTTP/2 windows and loopback socket buffers together hold well under this; a
    // transport that buffered without bound would take it all.
    const BUFFERED_MAX: usize = 64 * 1024 * 1024;
    // A send that waits this long is blocked on the replica, not slow.
    const STALLED_AFTER: Duration = Duration::from_secs(1);
    let mut primary = start_primary().await;
    let mut up = connect(&primary.url, REPLICA, Extensions::NONE, pos_map()).await.expect("stream opens");
    let conn = expect_opened(&mut primary.events).await;

    let mut sent: u64 = 0;
    while (sent as usize) * FRAME_LEN <= BUFFERED_MAX {
        if timeout(STALLED_AFTER, conn.frames.send(record(sent, FRAME_LEN))).await.is_err() {
            break;
        }
        sent += 1;
    }
    assert!((sent as usize) * FRAME_LEN < BUFFERED_MAX, "the sender was held back after {sent} frames");
    assert!(sent > 0, "something was sent");

    // Now read: everything buffered arrives in order and the sender can go on.
    let frames = conn.frames;
    let more = tokio::spawn(async move {
        for seq in sent..sent + 16 {
            frames.send(record(seq, FRAME_LEN)).await.expect("the response is open");
        }
    });
    let received = read_to_end(&mut up.incoming).await;
    assert!(received == records(sent + 16, FRAME_LEN), "nothing lost or reordered under backpressure");
    timeout(STEP, more).await.expect("sender done").expect("sender ok");
}

#[tokio::test]
async fn dropping_the_servers_sender_ends_the_clients_incoming_cleanly() {
    let mut primary = start_primary().await;
    let mut up = connect(&primary.url, REPLICA, Extensions::ALL, pos_map()).await.expect("stream opens");
    let conn = expect_opened(&mut primary.events).await;
    conn.frames.send(record(0, 100)).await.expect("the response is open");
    drop(conn.frames);
    assert_eq!(read_to_end(&mut up.incoming).await, records(1, 100));
    // The response is finished, so the stream is over on the server too.
    assert!(data_until_closed(&mut primary.events, conn.id).await.is_empty());
}

#[tokio::test]
async fn dropping_the_clients_outgoing_closes_the_stream_on_the_server() {
    let mut primary = start_primary().await;
    let up = connect(&primary.url, REPLICA, Extensions::ALL, pos_map()).await.expect("stream opens");
    let conn = expect_opened(&mut primary.events).await;
    up.outgoing.send(record(1, 24)).await.expect("the request body is open");
    drop(up.outgoing);
    assert_eq!(data_until_closed(&mut primary.events, conn.id).await, records(2, 24)[24..].to_vec());
}

#[tokio::test]
async fn dropping_the_whole_client_closes_the_stream_on_the_server() {
    let mut primary = start_primary().await;
    let up = connect(&primary.url, REPLICA, Extensions::NONE, pos_map()).await.expect("stream opens");
    assert_eq!(up.ext, Extensions::NONE, "offering nothing, the replica is told nothing");
    let conn = expect_opened(&mut primary.events).await;
    assert_eq!(conn.ext, Extensions::NONE);
    drop(up);
    assert!(data_until_closed(&mut primary.events, conn.id).await.is_empty());
    assert!(conn.frames.is_closed(), "the response is gone, so the daemon's sends fail");
}

/// A plain HTTP/2 request as LiteFS makes it: no extensions header, and the request body ends
/// right after the position map.
#[tokio::test]
async fn a_litefs_replica_gets_no_extensions_header_and_its_stream_stays_open() {
    let mut primary = start_primary().await;
    let addr = primary.url.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect loopback");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("{}/stream", primary.url))
        .header(HEADER_NODE_ID, format!("{REPLICA}"))
        .body(Full::new(Bytes::from(pos_map())))
        .expect("valid request");
    let response = timeout(STEP, sender.send_request(request)).await.expect("answer in time").expect("answered");
    assert_eq!(response.status(), hyper::StatusCode::OK);
    assert!(response.headers().get(HEADER_EXTENSIONS).is_none(), "a LiteFS replica gets no extensions header");

    let conn = expect_opened(&mut primary.events).await;
    assert_eq!((conn.peer, conn.ext, conn.body.clone()), (REPLICA, Extensions::NONE, pos_map()));
    conn.frames.send(record(0, 64)).await.expect("the response is open");
    let mut body = response.into_body();
    let frame = timeout(STEP, body.frame()).await.expect("a frame in time").expect("body open").expect("no error");
    assert_eq!(frame.into_data().expect("data"), record(0, 64));
    assert!(primary.events.try_recv().is_err(), "the request body's end did not close the stream");
    drop(conn.frames);
    assert!(data_until_closed(&mut primary.events, conn.id).await.is_empty());
}

#[tokio::test]
async fn the_same_port_serves_http1_and_refuses_bad_stream_requests_with_400() {
    let mut primary = start_primary().await;
    let http1 = reqwest::Client::new();
    let info = http1.get(format!("{}/info", primary.url)).send().await.expect("HTTP/1.1 request");
    assert_eq!(info.version(), reqwest::Version::HTTP_11);
    assert_eq!(info.text().await.expect("body"), "info");

    let stream_url = format!("{}/stream", primary.url);
    let too_many = (MAX_POS_MAP_ENTRIES + 1).to_be_bytes().to_vec();
    let long_name = [&[0, 0, 0, 1][..], &u32::MAX.to_be_bytes()].concat();
    let cases: [(Option<&str>, Vec<u8>, &str); 5] = [
        (None, pos_map(), "missing Litefs-Id"),
        (Some("12"), pos_map(), "not 16 hex digits"),
        (Some("0123456789ABCDEF"), too_many, "position map length 4097"),
        (Some("0123456789ABCDEF"), long_name, "database name length 4294967295"),
        (Some("0123456789ABCDEF"), pos_map()[..10].to_vec(), "input ends at offset 10"),
    ];
    for (id, body, reason) in cases {
        let mut request = http1.post(&stream_url).body(body);
        if let Some(id) = id {
            request = request.header(HEADER_NODE_ID, id);
        }
        let response = request.send().await.expect("answered");
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST, "{reason}");
        let text = response.text().await.expect("body");
        assert!(text.contains(reason), "{text:?} should say {reason:?}");
    }
    assert!(primary.events.try_recv().is_err(), "no stream opened for refused requests");

    // The client reports a refusal with its status and the primary's reason.
    let refused = connect(&primary.url, REPLICA, Extensions::ALL, (MAX_POS_MAP_ENTRIES + 1).to_be_bytes().to_vec());
    match refused.await {
        Err(ConnectError::Status { url, status, body }) => {
            assert_eq!(url, format!("{}/stream", primary.url));
            assert_eq!(status, hyper::StatusCode::BAD_REQUEST);
            assert!(body.contains("position map length 4097"), "{body:?}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_a_connect_error_naming_the_url() {
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", unused.local_addr().expect("bound address"));
    drop(unused);
    match connect(&url, REPLICA, Extensions::ALL, pos_map()).await {
        Err(error @ ConnectError::Connect { .. }) => assert!(error.to_string().contains(&url), "{error}"),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn serve_returns_after_shutdown_once_open_streams_end() {
    let mut primary = start_primary().await;
    let mut up = connect(&primary.url, REPLICA, Extensions::ALL, pos_map()).await.expect("stream opens");
    let conn = expect_opened(&mut primary.events).await;
    primary.stop.take().expect("not stopped yet").send(()).expect("serve is running");
    // The daemon ends its streams on shutdown; the open one then lets serve finish.
    conn.frames.send(record(0, 32)).await.expect("the response is open");
    drop(conn.frames);
    assert_eq!(read_to_end(&mut up.incoming).await, records(1, 32));
    let served = timeout(STEP, primary.served).await.expect("serve returns").expect("serve task ok");
    served.expect("serve ends without error");
    assert!(connect(&primary.url, REPLICA, Extensions::ALL, pos_map()).await.is_err(), "no longer listening");
}

// ---------------------------------------------------------------------------------------------
// turmoil: the same client and server over a simulated network

mod sim {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};

    use replite::http::stream_server::SHUTDOWN_GRACE;
    use replite::http::{connect_via, connect_with, serve_with};
    use tokio::time::Instant;

    use super::*;

    const PORT: u16 = 20202;
    const URL: &str = "http://primary:20202";
    /// Records the simulated primary sends after its burst: one per heartbeat interval.
    const HEARTBEAT: Duration = Duration::from_millis(100);
    /// Slack on top of a deadline the transport promises: latency of the last messages.
    const SLACK: Duration = Duration::from_secs(2);

    /// turmoil's listener as axum's: `serve_with` runs unchanged on the simulated network.
    struct SimListener(turmoil::net::TcpListener);

    impl axum::serve::Listener for SimListener {
        type Io = turmoil::net::TcpStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            self.0.accept().await.expect("accepting on the simulated network does not fail")
        }

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.0.local_addr()
        }
    }

    /// What the simulated primary saw, for the replica's assertions.
    #[derive(Default)]
    struct Seen {
        opened: Vec<DownstreamId>,
        closed: Vec<DownstreamId>,
        data: Vec<u8>,
    }

    /// A primary whose "daemon" answers every stream with `burst` records of `len` bytes back
    /// to back, then one more per [`HEARTBEAT`] until the stream is gone.
    fn primary(sim: &mut turmoil::Sim<'_>, seen: Arc<Mutex<Seen>>, burst: u64, len: usize) {
        sim.host("primary", move || {
            let seen = seen.clone();
            async move {
                let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
                let listener = SimListener(turmoil::net::TcpListener::bind(bind).await?);
                let (tx, mut events) = mpsc::unbounded_channel();
                tokio::spawn(serve_with(listener, stream_routes(tx), std::future::pending()));
                while let Some(event) = events.recv().await {
                    let mut seen = seen.lock().expect("not poisoned");
                    match event {
                        StreamServerEvent::Opened(conn) => {
                            seen.opened.push(conn.id);
                            tokio::spawn(async move {
                                for seq in 0.. {
                                    if seq >= burst {
                                        tokio::time::sleep(HEARTBEAT).await;
                                    }
                                    if conn.frames.send(record(seq, len)).await.is_err() {
                                        return;
                                    }
                                }
                            });
                        }
                        StreamServerEvent::Data { bytes, .. } => seen.data.extend(bytes),
                        StreamServerEvent::Closed { id } => seen.closed.push(id),
                    }
                }
                Ok(())
            }
        });
    }

    async fn open() -> Result<UpstreamConn, ConnectError> {
        let tcp = turmoil::net::TcpStream::connect(("primary", PORT))
            .await
            .map_err(|source| ConnectError::Connect { url: URL.to_owned(), source })?;
        connect_with(tcp, URL, REPLICA, Extensions::ALL, pos_map()).await
    }

    /// Reads the next `count` records of `len` bytes (numbered from `first`), checking each.
    async fn expect_records(up: &mut UpstreamConn, first: u64, count: u64, len: usize) {
        let got = read_exactly(&mut up.incoming, count as usize * len).await;
        let want: Vec<u8> = (first..first + count).flat_map(|seq| record(seq, len)).collect();
        assert!(got == want, "records {first}..{} arrive intact and in order", first + count);
    }

    fn builder(duration: Duration) -> turmoil::Sim<'static> {
        turmoil::Builder::new().simulation_duration(duration).rng_seed(7).build()
    }

    #[test]
    fn a_partition_mid_stream_ends_the_clients_incoming_in_bounded_time_and_reconnecting_works() {
        let mut sim = builder(Duration::from_secs(120));
        let seen = Arc::new(Mutex::new(Seen::default()));
        primary(&mut sim, seen.clone(), 0, 64);
        sim.client("replica", async move {
            let mut up = open().await?;
            expect_records(&mut up, 0, 10, 64).await;

            turmoil::partition("replica", "primary");
            let cut = Instant::now();
            let bound = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + SLACK;
            let ended = timeout(bound, async {
                // Records already on their way may still arrive; the bound caps the loop.
                while let Some(Ok(_)) = up.incoming.recv().await {}
            })
            .await;
            assert!(ended.is_ok(), "incoming still open {bound:?} after the partition");
            assert!(cut.elapsed() >= KEEPALIVE_INTERVAL, "ended by the keep-alive, not by chance");

            // Connecting while partitioned fails at once (the SYN is dropped).
            assert!(matches!(open().await, Err(ConnectError::Connect { .. })));

            turmoil::repair("replica", "primary");
            let mut again = open().await?;
            expect_records(&mut again, 0, 10, 64).await;

            // The primary noticed the dead stream by itself (its own keep-alive).
            let first = seen.lock().expect("not poisoned").opened[0];
            let noticed = timeout(bound, async {
                while !seen.lock().expect("not poisoned").closed.contains(&first) {
                    tokio::time::sleep(HEARTBEAT).await;
                }
            });
            assert!(noticed.await.is_ok(), "the primary closed the partitioned stream");
            Ok(())
        });
        sim.run().expect("simulation passes");
    }

    #[test]
    fn a_slow_jittery_link_still_delivers_everything_in_order() {
        const BURST: u64 = 160;
        const LEN: usize = 16 * 1024; // 2.5 MiB burst
        const ACKS: u64 = 200;
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(120))
            .min_message_latency(Duration::from_millis(50))
            .max_message_latency(Duration::from_millis(400))
            .rng_seed(11)
            .build();
        let seen = Arc::new(Mutex::new(Seen::default()));
        primary(&mut sim, seen.clone(), BURST, LEN);
        sim.client("replica", async move {
            let mut up = open().await?;
            let outgoing = up.outgoing.clone();
            let acking = tokio::spawn(async move {
                for seq in 0..ACKS {
                    outgoing.send(record(seq, 24)).await.expect("the request body is open");
                }
            });
            // The burst, then heartbeats spaced out by time: both arrive whole and in order.
            expect_records(&mut up, 0, BURST + 20, LEN).await;
            timeout(STEP, acking).await.expect("acks sent in time").expect("acker ok");
            let all_acks = records(ACKS, 24);
            let delivered = timeout(STEP, async {
                while seen.lock().expect("not poisoned").data.len() < all_acks.len() {
                    tokio::time::sleep(HEARTBEAT).await;
                }
            });
            assert!(delivered.await.is_ok(), "every acknowledgement reached the primary");
            assert!(seen.lock().expect("not poisoned").data == all_acks, "acknowledgements in order");
            Ok(())
        });
        sim.run().expect("simulation passes");
    }

    #[test]
    fn serve_drops_streams_still_open_after_the_shutdown_grace() {
        let mut sim = builder(Duration::from_secs(60));
        let served_for = Arc::new(Mutex::new(None));
        let record_served_for = served_for.clone();
        sim.host("primary", move || {
            let served_for = record_served_for.clone();
            async move {
                let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
                let listener = SimListener(turmoil::net::TcpListener::bind(bind).await?);
                let (tx, mut events) = mpsc::unbounded_channel();
                let (stop, stopped) = oneshot::channel::<()>();
                let serving = tokio::spawn(serve_with(listener, stream_routes(tx), async move {
                    let _ = stopped.await;
                }));
                let Some(StreamServerEvent::Opened(conn)) = events.recv().await else {
                    panic!("the first event is a stream opening");
                };
                conn.frames.send(record(0, 64)).await?;
                // A daemon that never ends its stream: serve must not wait for it forever.
                let stop_at = Instant::now();
                let _ = stop.send(());
                serving.await??;
                *served_for.lock().expect("not poisoned") = Some(stop_at.elapsed());
                drop(conn);
                Ok(())
            }
        });
        sim.client("replica", async move {
            let mut up = open().await?;
            expect_records(&mut up, 0, 1, 64).await;
            let bound = SHUTDOWN_GRACE + SLACK;
            let ended = timeout(bound, async { while let Some(Ok(_)) = up.incoming.recv().await {} }).await;
            assert!(ended.is_ok(), "the stream ended when serve gave up on it");
            let served_for = served_for.lock().expect("not poisoned").expect("serve returned");
            assert!(served_for >= SHUTDOWN_GRACE && served_for <= bound, "serve took {served_for:?}");
            Ok(())
        });
        sim.run().expect("simulation passes");
    }

    #[test]
    fn a_host_that_never_answers_fails_within_the_connect_timeout() {
        let mut sim = builder(Duration::from_secs(60));
        // Accepts connections and never reads or writes a byte.
        sim.host("silent", || async {
            let listener = turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?;
            let mut held = Vec::new();
            for _ in 0..4 {
                held.push(listener.accept().await?);
            }
            std::future::pending::<()>().await;
            Ok(())
        });
        sim.client("replica", async {
            let bound = CONNECT_TIMEOUT + SLACK;

            // TCP connects, but no HTTP/2 answer ever comes.
            let start = Instant::now();
            let tcp = turmoil::net::TcpStream::connect(("silent", PORT)).await?;
            let result = timeout(bound, connect_with(tcp, "http://silent:20202", REPLICA, Extensions::ALL, pos_map()));
            let result = result.await.expect("connect_with gave up by itself");
            assert!(matches!(result, Err(ConnectError::Timeout { timeout: CONNECT_TIMEOUT, .. })), "{result:?}");
            assert!(start.elapsed() >= CONNECT_TIMEOUT);

            // Not even the SYN is answered: the dial itself is covered by the timeout.
            turmoil::hold("replica", "silent");
            let start = Instant::now();
            let dial = |addr: String| turmoil::net::TcpStream::connect(addr);
            let result =
                timeout(bound, connect_via("http://silent:20202", REPLICA, Extensions::ALL, pos_map(), dial)).await;
            let result = result.expect("connect_via gave up by itself");
            match result {
                Err(error @ ConnectError::Timeout { .. }) => {
                    assert!(error.to_string().contains("http://silent:20202/stream"), "{error}");
                }
                other => panic!("expected a timeout, got {other:?}"),
            }
            assert!(start.elapsed() >= CONNECT_TIMEOUT);
            turmoil::release("replica", "silent");
            Ok(())
        });
        sim.run().expect("simulation passes");
    }
}

/// LiteFS's `?filter=a.db,b.db`: the databases a stream carries reach the node with the open
/// stream; an invalid name is a 400 naming it; no filter, or an empty one, means all.
#[tokio::test]
async fn a_stream_filter_names_the_databases_and_a_bad_one_is_refused() {
    let mut primary = start_primary().await;
    let http1 = reqwest::Client::new();
    let stream_url = format!("{}/stream", primary.url);
    let open = |query: &'static str| {
        http1.post(format!("{stream_url}{query}")).header(HEADER_NODE_ID, format!("{REPLICA}")).body(pos_map()).send()
    };

    let refused = open("?filter=a.db,../etc/passwd").await.expect("answered");
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    let reason = refused.text().await.expect("body");
    assert!(reason.contains("filter"), "{reason:?}");
    assert!(primary.events.try_recv().is_err(), "no stream opened for a refused filter");

    let expected = |names: &[&str]| Some(names.iter().map(|n| DbName::new(n).expect("valid")).collect());
    for (query, only) in [
        ("?filter=a.db,b.db,", expected(&["a.db", "b.db"])),
        ("?filter=b.db", expected(&["b.db"])),
        ("?filter=", None),
        ("", None),
        ("?other=1", None),
    ] {
        let response = open(query).await.expect("answered");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{query}");
        let conn = expect_opened(&mut primary.events).await;
        assert_eq!(conn.only, only, "{query}");
        drop(conn.frames);
        drop(response);
        assert!(data_until_closed(&mut primary.events, conn.id).await.is_empty());
    }
}
