//! Logs: human-readable by default, JSON lines with `--log-json`. The level follows `settings.log_level`
//! (applied live, as a subsystem) unless `RUST_LOG` pins it.

use anyhow::Result;
use model::Snapshot;
use model::subsystem::{ApplyError, Report, Subsystem};
use std::sync::Arc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Applies the configured log level to the running process.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    pinned: bool,
    applied: Option<model::config::LogLevel>,
}

pub fn init(json: bool) -> Result<LogLevel> {
    let pinned = std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(true)).try_init()?;
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()?;
    }
    Ok(LogLevel { handle, pinned, applied: None })
}

impl Subsystem for LogLevel {
    fn name(&self) -> &'static str {
        "logging"
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
        let level = snapshot.settings.log_level;
        if self.pinned {
            return Ok(Report::ok("level pinned by RUST_LOG"));
        }
        if self.applied != Some(level) {
            // Our own crates at the chosen level; chatty dependencies one step quieter unless tracing.
            let directive = match level {
                model::config::LogLevel::Debug => {
                    "info,portico=debug,portico_api=debug,portico_control=debug,portico_store=debug".to_string()
                }
                other => other.as_str().to_string(),
            };
            self.handle
                .reload(EnvFilter::new(&directive))
                .map_err(|e| ApplyError(format!("cannot set log level: {e}")))?;
            tracing::info!(level = level.as_str(), "log level applied");
            self.applied = Some(level);
        }
        Ok(Report::ok(format!("level {}", level.as_str())))
    }
}
