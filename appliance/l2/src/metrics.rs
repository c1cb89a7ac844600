//! The responder's Prometheus metrics (`portico_l2_*`), through the `metrics` facade. Handles are created
//! once per interface so the frame path does no registry lookups and no allocation.

use crate::wire::Ignored;
use metrics::{Counter, Gauge};

pub const REQUESTS_ANSWERED: &str = "portico_l2_requests_answered_total";
pub const GRATUITOUS_SENT: &str = "portico_l2_gratuitous_sent_total";
pub const FRAMES_IGNORED: &str = "portico_l2_frames_ignored_total";
pub const VIPS_ANNOUNCED: &str = "portico_l2_vips_announced";

pub struct IfMetrics {
    pub answered: Counter,
    pub gratuitous: Counter,
    pub ignored: [Counter; 6],
    pub vips: Gauge,
}

impl IfMetrics {
    pub fn new(interface: &str) -> IfMetrics {
        let i = interface.to_owned();
        IfMetrics {
            answered: metrics::counter!(REQUESTS_ANSWERED, "interface" => i.clone()),
            gratuitous: metrics::counter!(GRATUITOUS_SENT, "interface" => i.clone()),
            ignored: Ignored::ALL
                .map(|r| metrics::counter!(FRAMES_IGNORED, "interface" => i.clone(), "reason" => r.as_str())),
            vips: metrics::gauge!(VIPS_ANNOUNCED, "interface" => i),
        }
    }
}
