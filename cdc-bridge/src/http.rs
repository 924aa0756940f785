//! A tiny HTTP/1.1 responder for `/metrics`, `/healthz` and the dashboard (`/`, `/api/dashboard.json`).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::dashboard::{Dashboard, PAGE};
use crate::metrics::Registry;

/// The dashboard's inline script and style may run; nothing may be loaded from elsewhere.
const CSP: &str =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'";

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    dashboard: Arc<Dashboard>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    let dashboard = dashboard.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, &registry, &dashboard).await {
                            tracing::debug!(error = %e, "http request failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "metrics listener accept failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn respond(
    mut stream: TcpStream,
    registry: &Registry,
    dashboard: &Dashboard,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out")
            })??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts
        .next()
        .and_then(|p| p.split('?').next())
        .unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        ("GET", "/api/dashboard.json") => (
            "200 OK",
            "application/json; charset=utf-8",
            dashboard.json(),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        ("GET", "/healthz") => {
            let detail: String = registry
                .sources()
                .iter()
                .map(|s| format!("{} {}\n", s.name, s.state().as_str()))
                .collect();
            if registry.healthy() {
                (
                    "200 OK",
                    "text/plain; charset=utf-8",
                    format!("ok\n{detail}"),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    format!("unhealthy\n{detail}"),
                )
            }
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: {CSP}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
