//! The neighbor protocol's libp2p request-response codec: reads at most
//! [`MESSAGE_BYTES_MAX`] + 1 bytes of a stream (the writer closes its side after one
//! message) and hands them to the pure decoders in [`crate::wire`]. A malformed or oversized
//! message is an `InvalidData` I/O error, which request-response reports as a failed
//! exchange (an inbound one silently: the stream is closed, so the codec counts it itself,
//! `malformed_messages`); nothing a peer sends can panic the node.

use crate::api::{Counters, PeeringCounter};
use crate::wire::{self, Request, Response, MESSAGE_BYTES_MAX};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};
use std::io;
use std::sync::Arc;

/// The protocol name of neighbor handshakes and leaves.
pub const NEIGHBOR_PROTOCOL: StreamProtocol = StreamProtocol::new("/runnel/neighbor/1.0.0");

/// Cloned per stream; every clone counts into the same counters.
#[derive(Clone, Debug)]
pub struct NeighborCodec {
    pub(crate) counters: Arc<Counters>,
}

impl NeighborCodec {
    fn invalid(&self, error: wire::WireError) -> io::Error {
        self.counters.add(PeeringCounter::MalformedMessages, 1);
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(MESSAGE_BYTES_MAX + 1);
    io.take(MESSAGE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

impl request_response::Codec for NeighborCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request> {
        wire::decode_request(&read_message(io).await?).map_err(|error| self.invalid(error))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response> {
        wire::decode_response(&read_message(io).await?).map_err(|error| self.invalid(error))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, request: Request) -> io::Result<()> {
        io.write_all(&wire::encode_request(&request)).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, response: Response) -> io::Result<()> {
        io.write_all(&wire::encode_response(&response)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec;

    // Goal: the codec reads what it writes, and oversized or garbage streams are InvalidData
    // errors (not panics, not reads past the bound).
    #[test]
    fn codec_reads_what_it_writes_and_rejects_garbage() {
        let counters = Arc::new(Counters::default());
        let mut codec = NeighborCodec { counters: counters.clone() };
        let request = Request::Leave(wire::Leave { part: [4; 32], link_id: 9 });
        let mut buffer = Vec::new();
        block_on(codec.write_request(&NEIGHBOR_PROTOCOL, &mut futures::io::Cursor::new(&mut buffer), request)).unwrap();
        let read = block_on(codec.read_request(&NEIGHBOR_PROTOCOL, &mut futures::io::Cursor::new(&buffer))).unwrap();
        assert_eq!(read, request);
        for garbage in [vec![], vec![1, 77], vec![1; MESSAGE_BYTES_MAX * 10]] {
            let error = block_on(codec.read_request(&NEIGHBOR_PROTOCOL, &mut futures::io::Cursor::new(&garbage))).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            let error = block_on(codec.read_response(&NEIGHBOR_PROTOCOL, &mut futures::io::Cursor::new(&garbage))).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        }
        assert_eq!(counters.get(PeeringCounter::MalformedMessages), 6);
    }
}
