//! Typed custom headers: what RocketMQ calls `CommandCustomHeader`, flattened into
//! [`ExtFields`](super::ext::ExtFields) on the wire (`rocketmq-protocol.md` §2.2–§2.9).
//!
//! Each header has `from_ext` and `to_ext`, so the broker reads requests and writes responses
//! and a client does the reverse with the same types. A field of type `Option<T>` is optional;
//! every other field is required, and `to_ext` always writes it, because Java and C++ clients
//! fail late (an NPE, an abort) on a missing response field. Unknown ext fields (5.x `lo`, `ns`,
//! ACL's `AccessKey`, ...) are ignored on read.
//!
//! - [`send`]: SEND_MESSAGE (V1 and V2 names) and its response.
//! - [`pull`]: PULL_MESSAGE, its sysFlag bits, QUERY_MESSAGE and VIEW_MESSAGE_BY_ID.
//! - [`offset`]: consumer offsets and queue offset queries.
//! - [`client`]: consumer groups, send-back, transactions.
//! - [`namesrv`]: routes, broker registration, topic creation.

pub mod client;
pub mod namesrv;
pub mod offset;
pub mod pull;
pub mod send;

pub use client::*;
pub use namesrv::*;
pub use offset::*;
pub use pull::*;
pub use send::*;

/// Declares a header struct whose fields map one-to-one to ext-field keys, with `from_ext` and
/// `to_ext`. Each field is written `name: Type = "wireKey"`.
macro_rules! ext_header {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $key:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Reads the header; unknown fields are ignored.
            pub fn from_ext(
                ext: &$crate::remoting::ext::ExtFields,
            ) -> Result<Self, $crate::remoting::ext::HeaderError> {
                Ok(Self {
                    $( $field: <$ty as $crate::remoting::ext::ExtValue>::read(ext, $key)?, )*
                })
            }

            /// Writes every required field and every optional field that is set.
            pub fn to_ext(&self) -> $crate::remoting::ext::ExtFields {
                #[allow(unused_mut)]
                let mut ext = $crate::remoting::ext::ExtFields::with_capacity(8);
                $( $crate::remoting::ext::ExtValue::write(&self.$field, &mut ext, $key); )*
                ext
            }
        }
    };
}
pub(crate) use ext_header;
