//! The server's counters for a scraper: the stats line in the Prometheus text format
//! ([`prometheus`]), served over HTTP by `quench serve --metrics ADDR` ([`endpoint`]).
pub mod endpoint;
pub mod prometheus;

pub use endpoint::MetricsEndpoint;
pub use prometheus::render;
