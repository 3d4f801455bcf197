//! The codec of every generated stub: prost's, except that a request body that is not a valid
//! message is INVALID_ARGUMENT (with a `BadRequest` naming the request), not tonic's INTERNAL.
//! Hostile bytes are the caller's fault, and INTERNAL is reserved for the server's own bugs.

use tonic::codec::{BufferSettings, DecodeBuf, EncodeBuf};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// `tonic_prost::ProstCodec` with decode failures mapped to INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<<tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder>;
    type Decoder = Decoder<<tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(self.0.decoder())
    }
}

/// prost's encoder, unchanged.
#[derive(Debug)]
pub struct Encoder<E>(E);

impl<E: tonic::codec::Encoder<Error = Status>> tonic::codec::Encoder for Encoder<E> {
    type Item = E::Item;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, dst)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// prost's decoder with its INTERNAL parse errors turned into INVALID_ARGUMENT.
#[derive(Debug)]
pub struct Decoder<D>(D);

impl<D: tonic::codec::Decoder<Error = Status>> tonic::codec::Decoder for Decoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(src).map_err(|status| if status.code() == Code::Internal { invalid_message() } else { status })
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// A message buffer's first allocation: Allot's messages are a few hundred bytes, and tonic's 8 KiB
/// default was allocated for every call and held for every open stream, on each side of the call.
/// A larger message grows its buffer as it needs.
pub const BUFFER_BYTES: usize = 1024;
/// Encoded messages of a stream gathered into one HTTP/2 DATA frame at most (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// INVALID_ARGUMENT for bytes that are not the expected message.
pub fn invalid_message() -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info("INVALID_ARGUMENT", "allot.v1", std::collections::HashMap::<String, String>::new());
    details.add_bad_request_violation("request", "is not a valid protobuf message of the method's request type");
    Status::with_error_details(Code::InvalidArgument, "invalid request: not a valid message", details)
}
