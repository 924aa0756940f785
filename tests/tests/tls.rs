//! TLS: the bridge streams a POS into the ERP over TLS only (both servers with `ssl = on` and `hostssl` rules),
//! verifying their certificates against a CA the test makes; a wrong name, an unknown CA or no TLS are refused
//! with a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use possync_e2e::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl (the TLS test makes its certificates with it): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate it signs for `names` (subjectAltName entries such as `DNS:localhost`).
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make(tag: &str) -> Certificates {
        let dir = workspace_root()
            .join("target")
            .join("e2e")
            .join(format!("tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let c = Certificates { dir };
        c.ca("ca");
        c.ca("other-ca");
        c
    }

    fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=possync test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// `<name>.crt` and `<name>.key`, signed by `ca`, readable by the postgres user only.
    fn server(&self, name: &str, names: &str) -> (String, String) {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={names}\n"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", ext.display()));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
        let key = self.path(&format!("{name}.key"));
        for args in [
            vec!["postgres:postgres", key.as_str()],
            vec!["postgres:postgres", &self.path(&format!("{name}.crt"))],
        ] {
            let ok = Command::new("chown")
                .args(&args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown {args:?}");
        }
        let ok = Command::new("chmod")
            .args(["0600", key.as_str()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chmod {key}");
        (self.path(&format!("{name}.crt")), key)
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ssl_conf(cert: &str, key: &str) -> [String; 3] {
    [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{cert}'"),
        format!("ssl_key_file = '{key}'"),
    ]
}

/// `possync-bridge check` for one source: (exit code, what it printed).
fn check(erp_url: &str, pos_url: &str) -> (Option<i32>, String) {
    let out = Command::new(bridge_path())
        .args(["check", "--erp", erp_url, "--source"])
        .arg(format!("store42={pos_url}"))
        .output()
        .expect("possync-bridge check");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Client connections over TCP, and how many of them use TLS.
async fn tcp_connections(db: &tokio_postgres::Client) -> (i64, i64) {
    let r = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
               JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_ssl: {e}"));
    (r.get(0), r.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_streams_over_verified_tls_and_refuses_what_it_cannot_trust() {
    let _serial = serial().await;
    let certs = Certificates::make("bridge");
    // the ERP's certificate names its address, the POS's only the name localhost
    let (erp_cert, erp_key) = certs.server("erp", "IP:127.0.0.1,DNS:localhost");
    let (pos_cert, pos_key) = certs.server("pos", "DNS:localhost");
    let erp_conf = ssl_conf(&erp_cert, &erp_key);
    let pos_conf = ssl_conf(&pos_cert, &pos_key);
    let erp = erp_cluster_with(&erp_conf.each_ref().map(String::as_str)).await;
    let pos = pos_cluster(&pos_conf.each_ref().map(String::as_str)).await;
    erp.require_tls("trust", None).await;
    pos.require_tls("scram-sha-256", Some("tls-pw-5c1e")).await;
    let ca = certs.path("ca.crt");
    let other_ca = certs.path("other-ca.crt");
    let erp_url = format!(
        "postgres://postgres@127.0.0.1:{}/erp?sslmode=verify-full&sslrootcert={ca}",
        erp.port
    );
    let pos_url = format!(
        "postgres://postgres:tls-pw-5c1e@localhost:{}/pos?sslmode=verify-full&sslrootcert={ca}",
        pos.port
    );
    let pos_db = pos.connect("pos").await;
    let erp_db = erp.connect("erp").await;

    // a plain connection is turned away by both servers
    let plain = |url: &str| url.replace("sslmode=verify-full", "sslmode=disable");
    let (code, said) = check(&plain(&erp_url), &plain(&pos_url));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no encryption"), "{said}");

    // verified on both sides: the replication connection and every ordinary one use TLS
    let bridge = Bridge::start(&erp_url, &[("store42", pos_url.clone())], &[]);
    bridge.wait_streaming("store42", Duration::from_secs(30));
    run_sales(&pos_db, "T", 1, 30, 50).await;
    // the harness's own connections use the Unix sockets: TCP needs TLS now
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let have: i64 = erp_db
            .query_one(
                "SELECT count(*) FROM possync.event WHERE kind = 'sale'",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_default();
        if have >= 30 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{have} of 30 sales posted over TLS\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        erp_totals(&erp_db, "store42").await,
        pos_totals(&pos_db).await
    );
    let (pos_tcp, pos_tls) = tcp_connections(&pos_db).await;
    let (erp_tcp, erp_tls) = tcp_connections(&erp_db).await;
    eprintln!("POS: {pos_tls} of {pos_tcp} TCP connections use TLS; ERP: {erp_tls} of {erp_tcp}");
    assert!(
        pos_tcp >= 2 && pos_tls == pos_tcp,
        "POS {pos_tls}/{pos_tcp}"
    );
    assert!(
        erp_tcp >= 1 && erp_tls == erp_tcp,
        "ERP {erp_tls}/{erp_tcp}"
    );
    let walsender_tls: bool = pos_db
        .query_one(
            "SELECT s.ssl FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid \
             WHERE r.slot_name = 'possync_store42'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("walsender: {e}"));
    assert!(walsender_tls, "the replication connection does not use TLS");
    assert!(!bridge.log().contains("tls-pw-5c1e"));
    assert_eq!(bridge.terminate(), Some(0));

    // the POS's certificate does not name 127.0.0.1: verify-full refuses it, verify-ca (the chain only) takes it
    let by_address = format!(
        "postgres://postgres:tls-pw-5c1e@127.0.0.1:{}/pos?sslmode=verify-full&sslrootcert={ca}",
        pos.port
    );
    let (code, said) = check(&erp_url, &by_address);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("cannot connect to the POS") && said.contains("not valid for name"),
        "{said}"
    );
    let (code, said) = check(&erp_url, &by_address.replace("verify-full", "verify-ca"));
    assert!(
        !said.contains("cannot connect"),
        "verify-ca refused a certificate from the right CA: {said}"
    );
    assert_eq!(code, Some(0), "{said}");
    // a certificate from another CA is refused, whatever the name
    let (code, said) = check(&erp_url.replace(&ca, &other_ca), &pos_url);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("ERP: cannot connect") && said.contains("UnknownIssuer"),
        "{said}"
    );
    // require encrypts without checking; verify modes without a CA file are refused before connecting
    let require = pos_url.replace(
        &format!("sslmode=verify-full&sslrootcert={ca}"),
        "sslmode=require",
    );
    let (code, said) = check(&erp_url, &require);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = check(
        &erp_url,
        &pos_url.replace(&format!("&sslrootcert={ca}"), ""),
    );
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("the URL of source store42: sslmode=verify-full needs sslrootcert=FILE"),
        "{said}"
    );
    assert!(!said.contains("tls-pw-5c1e"), "{said}");
}
