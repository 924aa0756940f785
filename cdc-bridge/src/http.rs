//! A tiny HTTP/1.1 responder for `/metrics`, `/healthz` and the dashboard (`/`, `/api/dashboard.json`).
//!
//! On an address that is not loopback every path but `/healthz` needs the token from [`TOKEN_ENV`]: as
//! `Authorization: Bearer <token>` (scrapers, curl) or as the password of HTTP Basic authentication (browsers ask
//! for it once and send it with the page's own requests). The token is compared in constant time and never logged.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::dashboard::{Dashboard, PAGE};
use crate::metrics::Registry;

/// The dashboard's inline script and style may run; nothing may be loaded from elsewhere.
const CSP: &str =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'";

/// The environment variable that holds the bearer token for `/`, `/metrics` and `/api/*`.
pub const TOKEN_ENV: &str = "POSSYNC_BRIDGE_TOKEN";
/// Shortest token accepted: a short one could be guessed over the network.
pub const TOKEN_MIN_LEN: usize = 16;

/// Who may read what the bridge serves.
#[derive(Clone)]
pub struct Access {
    token: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_some() {
            "<set>"
        } else {
            "<none>"
        };
        f.debug_struct("Access").field("token", &token).finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("the metrics and dashboard address {addr} is reachable from the network: set {TOKEN_ENV} to a bearer token of at least {TOKEN_MIN_LEN} characters (clients send \"Authorization: Bearer <token>\"), or listen on a loopback address such as 127.0.0.1")]
    TokenMissing { addr: std::net::SocketAddr },
    #[error(
        "{TOKEN_ENV} is set but shorter than {TOKEN_MIN_LEN} characters; use a longer random token"
    )]
    TokenTooShort,
}

impl Access {
    /// Decides the access rule for a listener bound to `addr`, with the token `token` (from [`TOKEN_ENV`]). A
    /// token, when given, is required on any address; without one only a loopback address is allowed.
    pub fn for_address(
        addr: std::net::SocketAddr,
        token: Option<String>,
    ) -> Result<Access, AccessError> {
        match token.filter(|t| !t.is_empty()) {
            Some(t) if t.chars().count() < TOKEN_MIN_LEN => Err(AccessError::TokenTooShort),
            Some(t) => Ok(Access { token: Some(t) }),
            None if addr.ip().is_loopback() => Ok(Access { token: None }),
            None => Err(AccessError::TokenMissing { addr }),
        }
    }

    /// No token: everything is open (loopback only; see [`Access::for_address`]).
    pub fn open() -> Access {
        Access { token: None }
    }

    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether a request for `path` with this `Authorization` header value may be answered.
    pub fn allows(&self, path: &str, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if path == "/healthz" {
            return true;
        }
        let Some(given) = authorization.and_then(presented_token) else {
            return false;
        };
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }
}

/// The token in an `Authorization` header value: `Bearer <token>`, or the password of `Basic <base64(user:pw)>`.
fn presented_token(value: &str) -> Option<String> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(base64_decode(rest)?).ok()?;
        decoded.split_once(':').map(|(_, pw)| pw.to_string())
    } else {
        None
    }
}

/// Standard base64 with padding; `None` on anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, quad) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Equality whose time depends only on the lengths, not on where the bytes first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    dashboard: Arc<Dashboard>,
    access: Access,
    mut shutdown: watch::Receiver<bool>,
) {
    let access = Arc::new(access);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    let dashboard = dashboard.clone();
                    let access = access.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, &registry, &dashboard, &access).await {
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
    access: &Access,
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
    let authorization = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then_some(value)
    });
    let mut challenge = "";
    let (status, content_type, body) = match (method, path) {
        (_, path) if !access.allows(path, authorization) => {
            challenge = "WWW-Authenticate: Basic realm=\"possync-bridge\", charset=\"UTF-8\"\r\nWWW-Authenticate: Bearer realm=\"possync-bridge\"\r\n";
            (
                "401 Unauthorized",
                "text/plain",
                format!("a bearer token is required (Authorization: Bearer <the token in {TOKEN_ENV}>)\n"),
            )
        }
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
        "HTTP/1.1 {status}\r\n{challenge}Content-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: {CSP}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-secret";

    fn addr(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_network_address_needs_a_token_and_loopback_does_not() {
        assert!(matches!(
            Access::for_address(addr("0.0.0.0:9187"), None),
            Err(AccessError::TokenMissing { .. })
        ));
        assert!(matches!(
            Access::for_address(addr("[::]:9187"), Some(String::new())),
            Err(AccessError::TokenMissing { .. })
        ));
        assert!(matches!(
            Access::for_address(addr("10.1.2.3:9187"), Some("short".into())),
            Err(AccessError::TokenTooShort)
        ));
        for loopback in ["127.0.0.1:9187", "[::1]:9187"] {
            let open = Access::for_address(addr(loopback), None).map(|a| a.requires_token());
            assert_eq!(open, Ok(false), "{loopback}");
        }
        let guarded = Access::for_address(addr("0.0.0.0:9187"), Some(TOKEN.into()));
        assert_eq!(guarded.map(|a| a.requires_token()), Ok(true));
        let msg = AccessError::TokenMissing {
            addr: addr("0.0.0.0:9187"),
        }
        .to_string();
        assert!(
            msg.contains(TOKEN_ENV) && msg.contains("0.0.0.0:9187"),
            "{msg}"
        );
    }

    #[test]
    fn only_the_right_token_opens_the_pages_and_healthz_stays_open() {
        let access = Access::for_address(addr("0.0.0.0:9187"), Some(TOKEN.into()))
            .unwrap_or_else(|e| panic!("{e}"));
        let bearer = format!("Bearer {TOKEN}");
        for path in ["/", "/metrics", "/api/dashboard.json", "/nowhere"] {
            assert!(!access.allows(path, None), "{path} without a token");
            assert!(access.allows(path, Some(&bearer)), "{path} with the token");
            assert!(
                access.allows(path, Some(&format!(" bearer  {TOKEN} "))),
                "{path}"
            );
            for wrong in [
                "Bearer ",
                "Bearer 0123456789abcdef-secreT",
                "Bearer 0123456789abcdef-secret2",
                "Bearer 0123456789abcdef-secre",
                TOKEN,
                "Token 0123456789abcdef-secret",
            ] {
                assert!(!access.allows(path, Some(wrong)), "{path} with {wrong:?}");
            }
        }
        assert!(access.allows("/healthz", None));
        // browsers: Basic with the token as the password ("ops:0123456789abcdef-secret")
        let basic = "Basic b3BzOjAxMjM0NTY3ODlhYmNkZWYtc2VjcmV0";
        assert!(access.allows("/", Some(basic)));
        assert!(!access.allows("/", Some("Basic b3BzOnNlY3JldA==")));
        assert!(!access.allows("/", Some("Basic %%%")));
        assert!(Access::open().allows("/metrics", None));
    }

    #[test]
    fn constant_time_equality_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"\xff"));
    }

    #[test]
    fn base64_decodes_padded_input_and_refuses_the_rest() {
        assert_eq!(base64_decode("b3BzOnB3").as_deref(), Some(&b"ops:pw"[..]));
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("YQ"), None);
        assert_eq!(base64_decode("YQ==YQ=="), None);
        assert_eq!(base64_decode("Y!=="), None);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let access = Access::for_address(addr("0.0.0.0:1"), Some(TOKEN.into()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{access:?}").contains("secret"));
    }
}
