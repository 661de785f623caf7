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
pub mod headers;
pub mod intake;
pub mod shutdown;
pub mod smtp;
pub mod queue_report;
pub mod control;
pub mod daemon;
pub mod logging;
pub mod cli;
