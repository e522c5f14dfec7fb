use std::time::Duration;

use anyhow::Context;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;

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
    let uri: hyper::Uri = url.parse().with_context(|| format!("invalid URL {url:?}"))?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "only http:// URLs can be probed");
    let host = uri.host().context("URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);

    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request =
            Request::get(uri.path()).header(hyper::header::HOST, host.as_str()).body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::Ok(response.status())
    };
    let status = tokio::time::timeout(Duration::from_secs(config.timeout_secs), exchange)
        .await
        .with_context(|| format!("{url} did not answer within {}s", config.timeout_secs))?
        .with_context(|| format!("{url} unreachable"))?;
    anyhow::ensure!(status == hyper::StatusCode::OK, "{url} answered {status}");
    Ok(())
}
