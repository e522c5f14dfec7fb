use std::time::Duration;

use anyhow::Context;

use crate::config::HealthcheckConfig;

/// GETs the health URL once; Ok only for a 200.
pub async fn probe(config: &HealthcheckConfig) -> anyhow::Result<()> {
    let url = match &config.url {
        Some(url) => url.clone(),
        None => {
            let mut addr = config.bind_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/health")
        }
    };
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("invalid URL {url:?}"))?;
    anyhow::ensure!(parsed.scheme() == "http", "only http:// URLs can be probed");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs))
        // The probe asks this instance, never a proxy the environment names.
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let response = client.get(parsed).send().await.map_err(|e| {
        if e.is_timeout() {
            anyhow::anyhow!("{url} did not answer within {}s", config.timeout_secs)
        } else {
            anyhow::Error::new(e).context(format!("{url} unreachable"))
        }
    })?;
    let status = response.status();
    anyhow::ensure!(status == reqwest::StatusCode::OK, "{url} answered {status}");
    Ok(())
}
