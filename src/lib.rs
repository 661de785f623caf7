//! petrel: an actor-based queueing mail transfer agent with a durable spool
//! and local mailboxes. See ARCHITECTURE.md for the map.

pub mod auth;
pub mod config;
pub mod directory;
pub mod mailbox;
pub mod outcome;
pub mod router;
pub mod scheduler;
pub mod spool;
