//! petrel: an actor-based queueing mail transfer agent with a durable spool
//! and local mailboxes. See ARCHITECTURE.md for the map.

pub mod auth;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod directory;
pub mod dsn;
pub mod headers;
pub mod history;
pub mod imap;
pub mod intake;
pub mod logging;
pub mod mailbox;
pub mod metrics;
pub mod mime;
pub mod outcome;
pub mod policy;
pub mod pop3;
pub mod queue_report;
pub mod router;
pub mod scheduler;
pub mod service;
pub mod session;
pub mod shutdown;
pub mod smtp;
pub mod spool;
pub mod store;
pub mod tls;
pub mod web;
