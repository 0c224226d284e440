//! Client metadata: what the IAM service says about the calling API client
//! (enabled, entitlements, IP filter), fetched and cached.

pub mod directory;
pub mod meta;
pub mod oauth;
pub mod source;

pub use directory::{CachePolicy, ClientDirectory, SourceFailure};
pub use meta::{ClientMeta, FieldPointers, IpFilter};
pub use source::{HttpSource, Lookup, Source};
