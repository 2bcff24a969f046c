//! Goal: malformed bytes from the network on the neighbor protocol are errors, never panics:
//! a raw libp2p peer (real TCP, Noise and Yamux on 127.0.0.1) opens `/runnel/neighbor/1.0.0`
//! streams and writes garbage, truncations and oversized messages; the node answers each
//! with a failed exchange (or, for well-formed nonsense, a refusal), counts them, and keeps
//! working. Stops within 30 s.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol, SwarmBuilder};
use runnel_peering::wire::{self, Endpoint, Propose, RefuseReason, Request, Response};
use runnel_peering::{Identity, Peering, PeeringConfig, PeeringCounter};
use runnel_proto::stream::StreamPartKey;
use std::io;
use std::time::{Duration, Instant};

const PART: StreamPartKey = StreamPartKey([0x77; 32]);

/// Writes whatever bytes it is given and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io.take(4096).read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>> {
        self.read_request(protocol, io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, bytes: Vec<u8>) -> io::Result<()> {
        io.write_all(&bytes).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, bytes: Vec<u8>) -> io::Result<()> {
        io.write_all(&bytes).await
    }
}

fn malformed_requests() -> Vec<Vec<u8>> {
    let valid = wire::encode_request(&Request::Propose(Propose {
        part: PART.0,
        link_id: 1,
        endpoint: Endpoint { address: "127.0.0.1:9000".parse().unwrap(), shards: 1 },
        ephemeral_public: [3; 32],
    }));
    let mut cases = vec![Vec::new(), vec![1], vec![2, 1], vec![1, 200], vec![0xff; 4000]];
    cases.extend((1..valid.len()).step_by(7).map(|end| valid[..end].to_vec()));
    let mut longer = valid.clone();
    longer.push(0);
    cases.push(longer);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes: Vec<u8> = (0..(state % 120) as usize).map(|i| (state >> (i % 50)) as u8).collect();
        if bytes.len() > 1 {
            bytes[0] = wire::WIRE_VERSION;
        }
        cases.push(bytes);
    }
    cases
}

#[test]
fn garbage_on_the_neighbor_protocol_is_refused_and_counted() {
    let dataplane = Endpoint { address: "127.0.0.1:31000".parse().unwrap(), shards: 2 };
    let mut config = PeeringConfig::new(Identity::generate(), dataplane);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let (node, _events) = Peering::spawn(config).unwrap();
    node.join(PART).unwrap();
    let target: Multiaddr = node.listen_addrs().unwrap().remove(0);
    let cases = malformed_requests();
    let (mut failed, mut refused_invalid) = (0, 0);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut swarm = SwarmBuilder::with_existing_identity(Keypair::generate_secp256k1())
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    RawCodec,
                    [(StreamProtocol::new("/runnel/neighbor/1.0.0"), ProtocolSupport::Outbound)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                )
            })
            .unwrap()
            .build();
        swarm.dial(target).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let peer = loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
                break peer_id;
            }
        };
        // One request at a time, each answered or failed before the next.
        let well_formed_nonsense = wire::encode_request(&Request::Propose(Propose {
            part: PART.0,
            link_id: 1,
            endpoint: Endpoint { address: "127.0.0.1:9000".parse().unwrap(), shards: 0 },
            ephemeral_public: [3; 32],
        }));
        for bytes in cases.iter().cloned().chain([well_formed_nonsense]) {
            swarm.behaviour_mut().send_request(&peer, bytes);
            loop {
                assert!(Instant::now() < deadline, "the node stopped answering");
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    }) => {
                        // The node closes the stream without a word on bytes it cannot decode
                        // (this raw codec reads that as an empty response).
                        if response.is_empty() {
                            failed += 1;
                        } else {
                            assert_eq!(wire::decode_response(&response), Ok(Response::Refuse(RefuseReason::Invalid)));
                            refused_invalid += 1;
                        }
                        break;
                    }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                        failed += 1;
                        break;
                    }
                    SwarmEvent::ConnectionClosed { .. } => panic!("the node closed the connection"),
                    _ => {}
                }
            }
        }
    });
    assert_eq!((failed, refused_invalid), (cases.len(), 1), "every malformed message fails, the nonsense one is refused");
    // The node counts a failure as its thread handles the event, which may be just after
    // the stream closed.
    let counted_by = Instant::now() + Duration::from_secs(5);
    while node.counter(PeeringCounter::MalformedMessages) < cases.len() as u64 {
        assert!(Instant::now() < counted_by, "{} of {} failures counted", node.counter(PeeringCounter::MalformedMessages), cases.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("garbage: {} malformed messages failed and were counted; 1 well-formed nonsense refused Invalid", cases.len());
    // Still alive and answering.
    assert!(node.neighbors(PART).unwrap().is_empty());
    assert!(!node.listen_addrs().unwrap().is_empty());
    node.shutdown();
}
