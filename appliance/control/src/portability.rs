//! Export and import of a whole appliance configuration, with its VIP allocations so that a restored or
//! migrated appliance keeps the same VIPs.

use crate::changes::{ChangeError, ChangeMeta, ChangeOptions, ChangeOutcome, Control};
use model::Config;
use model::ipam::Allocation;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "portico/v1";

/// The export file: the configuration document plus its allocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Always `portico/v1` for this layout.
    pub format: String,
    /// The revision exported (informational).
    #[serde(default)]
    pub revision: u64,
    pub config: Config,
    /// VIPs to keep where they still fit the pools.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
}

impl Control {
    pub fn export(&self) -> Export {
        let current = self.current();
        Export {
            format: FORMAT.into(),
            revision: current.revision,
            config: (*current.config).clone(),
            allocations: current.allocations.to_vec(),
        }
    }

    /// Replaces the configuration with an export, keeping its VIPs where they fit; one revision.
    pub async fn import(&self, meta: ChangeMeta, export: Export, dry_run: bool) -> Result<ChangeOutcome, ChangeError> {
        if export.format != FORMAT {
            return Err(ChangeError::Invalid(model::ValidationErrors::single(
                "format",
                format!("'{}' is not a format this version reads (expected '{FORMAT}')", export.format),
            )));
        }
        let options = ChangeOptions { dry_run, allocation_hints: Some(export.allocations), ..ChangeOptions::default() };
        let mut config = export.config;
        self.change(meta, options, move |c| {
            // An export without credentials keeps those of clusters that already exist here.
            model::cluster::carry_credentials(&c.clusters, &mut config.clusters);
            *c = config;
            Ok(())
        })
        .await
    }
}
