//! Floor 0, foundations: what every floor above may read and which reads
//! nothing of the crate's beyond this folder — the generated protobuf and its
//! gRPC codec, the
//! named bounds, durations, interning, reason codes, the shape every file
//! shares, reading YAML under bounds (and the line a YAML error names),
//! where files named by policies may be, and how much a refused client is
//! told.
//!
//! Never imports: any other module of the crate.

pub mod circuit;
pub mod client_errors;
pub mod codec;
pub mod document;
pub mod duration;
pub mod intern;
pub mod limits;
pub mod policy_files;
pub mod proto;
pub mod reason;
pub mod yaml;
pub mod yaml_error;
