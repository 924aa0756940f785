//! The dashboard and /metrics on a network address: a bearer token is required for everything but /healthz.

use std::time::Duration;

use possync_e2e::*;

const TOKEN: &str = "e2e-token-4f1c9a7d2b6e8035";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_network_address_the_pages_need_the_token_and_healthz_does_not() {
    let _serial = serial().await;
    let pos = pos_cluster(&[]).await;
    let erp = erp_cluster().await;
    let erp_url = erp.url("erp");
    let sources = [("net", pos.url("pos"))];

    // no token on 0.0.0.0: refused at start, with an error that names the variable
    let mut refused = Bridge::start_on("0.0.0.0", &[], &erp_url, &sources, &[]);
    assert_eq!(
        refused.wait_exit(Duration::from_secs(60)),
        Some(2),
        "{}",
        refused.log()
    );
    let log = refused.log();
    assert!(log.contains("POSSYNC_BRIDGE_TOKEN"), "{log}");
    drop(refused);

    let bridge = Bridge::start_on(
        "0.0.0.0",
        &[("POSSYNC_BRIDGE_TOKEN", TOKEN)],
        &erp_url,
        &sources,
        &[],
    );
    // the machine's own non-loopback address when it has one, else loopback (the listener is on 0.0.0.0)
    let host = non_loopback_address().unwrap_or_else(|| "127.0.0.1".to_string());
    let get = |path: &str, auth: Option<&str>| {
        let mut answer = None;
        for _ in 0..600 {
            answer = bridge.http_get_from(&host, path, auth);
            if answer.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        answer.unwrap_or_else(|| panic!("no answer for {path} from {host}\n{}", bridge.log()))
    };
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/", "/metrics", "/api/dashboard.json"] {
        let (code, body) = get(path, None);
        assert_eq!(code, 401, "{path} without the token: {body}");
        assert!(!body.contains(TOKEN));
        let (code, _) = get(path, Some("Bearer not-the-token-at-all-123"));
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, _) = get(path, Some(&bearer));
        assert_eq!(code, 200, "{path} with the token");
    }
    let (code, body) = get("/healthz", None);
    assert!(code == 200 || code == 503, "{code} {body}");
    assert!(body.contains("net "), "{body}");
    bridge.wait_streaming_with("net", Some(&bearer), Duration::from_secs(60));
    let (code, body) = get("/healthz", None);
    assert_eq!(code, 200, "/healthz without a token once streaming: {body}");
    let (_, metrics) = get("/metrics", Some(&bearer));
    assert!(metrics.contains("possync_bridge_streaming{source=\"net\"} 1"));
    assert!(
        !bridge.log().contains(TOKEN),
        "the token was logged:\n{}",
        bridge.log()
    );
    assert_eq!(bridge.terminate(), Some(0));
}

/// The first address of this machine that is not loopback (from `hostname -I`).
fn non_loopback_address() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}
