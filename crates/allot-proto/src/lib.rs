//! The `allot.v1` gRPC API: prost messages and tonic client/server stubs generated from
//! `proto/allot/v1/` at build time, plus the encoded descriptor set that server reflection serves.
//!
//! This crate holds no logic: conversions live in the server's `grpc::from_proto`/`to_proto`.
//! The stubs use [`codec::Codec`], prost's codec with undecodable requests answered
//! INVALID_ARGUMENT instead of INTERNAL.

#![allow(clippy::all, missing_docs)]

pub mod codec;

/// Messages and services of package `allot.v1`.
pub mod v1 {
    tonic::include_proto!("allot.v1");
}

/// The encoded `FileDescriptorSet` of every `allot.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/allot_descriptor.bin"));
