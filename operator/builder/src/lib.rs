//! The stage executor's first, pure-ish part: the build context and `.dockerignore`
//! ([`context`], [`dockerignore`]), COPY/ADD planning and copying into a root filesystem
//! ([`copy`]), user lookup in that root ([`users`]), the image-config state a stage carries
//! while its instructions run ([`image_state`]) and its mapping to and from an OCI image
//! config ([`oci_config`]), instruction cache keys ([`cache_key`]), and ADD's archive
//! extraction ([`archive`]) and URL downloads ([`remote`]).
//! RUN, snapshots and layers build on these; nothing here talks to Kubernetes, and only
//! [`remote`] (for `ADD <url>`) talks to a network.

pub mod archive;
pub mod cache_key;
pub mod context;
pub mod copy;
pub mod dockerignore;
pub mod executor;
pub mod gc;
pub mod image_state;
pub mod inplace;
pub mod job;
pub mod local;
pub mod oci_config;
/// Glob patterns (moved to the Dockerfile crate, where `.dockerignore` rules live).
pub use stagecoach_dockerfile::pattern;
pub mod placeholders;
pub mod remote;
pub mod rootpath;
pub mod run_mounts;
pub mod runc;
pub mod runner;
pub mod snapshot;
pub mod users;
