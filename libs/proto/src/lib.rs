//! Generated code for every Huitou contract. Servers and clients share it.

#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_docs)]

/// The encoded file descriptor set of every contract, with comments, for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/huitou_descriptor.bin"));

pub mod ext;

pub use ext::{micros_from_timestamp, timestamp_from_micros};

pub mod customer {
    pub mod v1 {
        tonic::include_proto!("huitou.customer.v1");
    }
}

pub mod loyalty {
    pub mod v1 {
        tonic::include_proto!("huitou.loyalty.v1");
    }
}

pub mod coupon {
    pub mod v1 {
        tonic::include_proto!("huitou.coupon.v1");
    }
}

pub mod notification {
    pub mod v1 {
        tonic::include_proto!("huitou.notification.v1");
    }
}

pub mod bench {
    pub mod v1 {
        tonic::include_proto!("huitou.bench.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("huitou.events.v1");
    }
}
