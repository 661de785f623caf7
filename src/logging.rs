//! Logging: `tracing` to stderr, one line per event (text, or one JSON
//! object per line with `log.format = "json"`), with a level filter that a
//! reload can change.

use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

use crate::config::LogFormat;

/// Replaces the log filter; errors name what is wrong with the filter.
type SetLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Changes the log filter at run time.
#[derive(Clone)]
pub struct LogControl {
    set: Arc<SetLevel>,
}

impl LogControl {
    /// Replaces the filter (e.g. `info`, `petrel=debug`).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        (self.set)(level)
    }
}

/// The filter for `level`. actix-server's own start and stop lines (one
/// per http listener and worker) are kept to warnings: the daemon logs
/// each listener itself.
fn level_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let f = EnvFilter::try_new(level)?;
    Ok(if level.contains("actix_server") {
        f
    } else {
        f.add_directive("actix_server=warn".parse()?)
    })
}

/// Installs the global subscriber. `level` is a tracing filter; `RUST_LOG`
/// is not consulted, the configuration is.
pub fn init(level: &str, format: LogFormat) -> LogControl {
    let filter = level_filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init(),
    };
    LogControl {
        set: Arc::new(move |level: &str| {
            let f = level_filter(level).map_err(|e| e.to_string())?;
            handle.reload(f).map_err(|e| e.to_string())
        }),
    }
}
