//! Calls any RPC by its path with raw protobuf bytes (a pass-through codec), so tests can be
//! driven by the authorization table and fuzzers can send bytes no client would.
#![allow(dead_code)]

use bytes::{Buf as _, BufMut as _};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

#[derive(Debug, Clone, Default)]
pub struct Raw;

#[derive(Debug, Clone, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Default)]
pub struct RawDecoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` with `body` and an optional `authorization` value; the first message of a
/// server stream stands for its answer.
pub async fn call(channel: Channel, path: &str, authorization: Option<&str>, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().map_err(|_| Status::internal("test: bad header"))?);
    }
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().map_err(|_| Status::internal("test: bad path"))?;
    if path.path().ends_with("/WatchEvents") {
        let mut stream = grpc.server_streaming(request, path, Raw).await?.into_inner();
        // A stream that was admitted waits for events; one message or a moment says so.
        match tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await {
            Ok(message) => Ok(message?.unwrap_or_default()),
            Err(_) => Ok(Vec::new()),
        }
    } else {
        Ok(grpc.unary(request, path, Raw).await?.into_inner())
    }
}
