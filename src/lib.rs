//! Liaison: a message broker for cross-border alert sharing between border
//! agencies.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`identity`] | `urn:liaison:<CC>:<agency>:<node>` identities, read from certificates |
//! | [`pki`] | the development PKI behind `liaison certs` |
//! | [`tls`] | rustls server config and the accept loop that attaches a [`tls::Peer`] to each connection |
//! | [`alert`] | the validated alert, its id and sequence types, validation rules |
//! | [`filter`], [`marking`] | what a feed wants, and what the markings let a node see |
//! | [`policy`] | the sharing policy file: roles, publish rights, bilateral agreements |
//! | [`receipt`], [`audit`] | delivered/acknowledged receipts; the hash-chained audit trail |
//! | [`store`] | sled: the log, its indexes, feed cursors; the write-ahead log and group commit (only module touching sled) |
//! | [`broker`] | the core: publish, history, feeds with at-least-once delivery, retention |
//! | [`grpc`] | every tonic service and their shared setup: identity from the connection, protobuf ⇄ core, errors ⇄ status |
//! | [`server`] | `run(listener, config, shutdown)`: wires it all together |
//! | [`agent`] | `liaison agent`: outbox, inbox and the upstream link of a remote post |
//! | [`federation`] | links between national brokers: export cursors, signed alerts, verified imports |
//! | [`bundle`] | offline bundles: a post's alerts and the broker's receipts on removable media, signed and encrypted (HPKE) |
//! | [`client`] | connecting to a broker as a node |
//! | [`console`] | `liaison console`: the officer's web page, served on loopback as the officer's node |
//! | [`json`] | the JSON form of alerts (command line, console) |
//! | [`cap`] | OASIS CAP 1.2 documents in (to publish) and out (from stored alerts) |
//! | [`gazetteer`] | the region's border crossings, agencies and borders (the demo, the console's map) |
//! | [`linkem`] | an emulated satellite, 3G or radio link between two network namespaces, at packet level (the link bench and tests) |
//! | [`flaky`] | a TCP proxy that cuts, stalls and black-holes links on command (the demo, the tests) |
//!
//! The `liaison` binary (`src/main.rs`) holds the command line (`cli`), the
//! simulated region (`demo`) and the load generators (`bench`); they use
//! this library's public API only.
//!
//! # How one alert flows
//!
//! A post calls `Publish` over mutual TLS. [`tls::incoming`] completed the
//! handshake and parsed the caller's [`identity::NodeId`] from its certificate;
//! [`grpc`] reads it from the request, [`alert::validate`] checks every field
//! and sets the origin, and [`broker::Broker::publish`] hands the alert to the
//! [`store`]'s writer thread. The writer stages every pending command as one
//! group, writes it as one record of the write-ahead log and applies it to
//! sled; one `fdatasync` makes every group waiting durable, and only then
//! are they acknowledged and the head `watch` advanced. Each open feed task (in [`broker`]) wakes on the
//! head, reads the new records by sequence, applies its [`filter`] and the
//! [`marking`] rules for its owner, and delivers them; the subscriber's acks
//! move the feed's persisted cursor.

pub mod agent;
pub mod alert;
pub mod audit;
pub mod broker;
pub mod bundle;
pub mod cap;
pub mod client;
pub mod console;
pub mod federation;
pub mod filter;
pub mod flaky;
pub mod gazetteer;
pub mod grpc;
pub mod identity;
pub mod json;
pub mod linkem;
pub mod marking;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod receipt;
pub mod server;
pub mod store;
pub mod tls;

/// Generated protobuf types and gRPC stubs of `proto/liaison/v1`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("liaison.v1");

    /// Encoded descriptor set of the API, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("liaison_descriptor");
}
