//! The `/metrics` answer both binaries give: OpenMetrics when the scraper's
//! `Accept` asks for it (Prometheus does), else the Prometheus text format
//! 0.0.4 (curl, older scrapers).

use prometheus_client::registry::Registry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type and text of `registry`, for a request whose `Accept`
/// headers are `accept`.
pub fn render<'a>(
    registry: &Registry,
    mut accept: impl Iterator<Item = &'a str>,
) -> Result<(&'static str, String), std::fmt::Error> {
    let mut out = String::with_capacity(8 * 1024);
    if accept.any(|v| v.contains("application/openmetrics-text")) {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
        Ok((OPENMETRICS, out))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
        Ok((prometheus_client::encoding::prometheus_text::CONTENT_TYPE, out))
    }
}
