//! Harness for the end-to-end tests: throwaway PostgreSQL 15 clusters run as the `postgres` user on free ports,
//! the bridge binary as a child process, a POS workload, and totals computed from the POS tables.

pub mod model;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::Rng;
use rust_decimal::Decimal;
use tokio_postgres::{Client, NoTls};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where the clusters' programs come from: `POSSYNC_PG_BIN` when set (the bench's private server tree, whose
/// possync.so no concurrent `make install` or `cargo pgrx test` replaces), else the system PostgreSQL 15.
fn pg_bin() -> String {
    std::env::var("POSSYNC_PG_BIN")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| PG_BIN.to_string())
}

/// The reference POS schema, as the bridge maps it with no configuration.
pub const POS_SCHEMA: &str = include_str!("../../cdc-bridge/sql/reference_pos_schema.sql");

pub mod catalog;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Tests start clusters and bridges; on two cores they run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The repository root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL program as the postgres user (initdb refuses root).
fn pg(program: &str, args: &[&str]) -> std::process::Output {
    let path = format!("{}/{program}", pg_bin());
    let mut cmd = if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-u", "postgres", &path]);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Appends settings to a data directory's postgresql.auto.conf.
fn append_conf(data: &Path, conf: &str) {
    let conf_path = data.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", conf_path.display()));
    f.write_all(conf.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write conf: {e}"));
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A throwaway PostgreSQL 15 cluster on its own port and socket directory.
pub struct Cluster {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
}

impl Cluster {
    /// initdb and start; `logical` sets wal_level=logical. `extra` lines go into postgresql.conf.
    pub fn start(name: &str, logical: bool, extra: &[&str]) -> Cluster {
        let base = workspace_root().join("target").join("e2e");
        std::fs::create_dir_all(&base)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        if is_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres", &base.to_string_lossy()])
                .status();
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.to_string_lossy()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cannot chown {} to postgres", dir.display());
        }
        let data = dir.join("data");
        let out = pg(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = on\nfull_page_writes = off\nmax_connections = 50\n",
            dir.display()
        );
        if logical {
            conf.push_str(
                "wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n",
            );
        }
        for l in extra {
            conf.push_str(l);
            conf.push('\n');
        }
        append_conf(&data, &conf);
        let c = Cluster {
            name: name.to_string(),
            port,
            dir,
        };
        c.pg_ctl_start();
        c
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn pg_ctl_start(&self) {
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let out = pg(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "start"],
        );
        assert!(
            out.status.success(),
            "{}: pg_ctl start failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Crashes the server: immediate shutdown, no checkpoint, crash recovery on the next start.
    pub fn crash(&self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = pg("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
        assert!(
            out.status.success(),
            "{}: pg_ctl stop -m {mode} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A hot standby of `primary` (pg_basebackup -R), on its own port and socket directory, streaming from it.
    pub fn standby_of(primary: &Cluster) -> Cluster {
        let base = workspace_root().join("target").join("e2e");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("standby-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.to_string_lossy()])
                .status();
        }
        let data = dir.join("data");
        primary.pg_tool(
            "pg_basebackup",
            &["-D", &data.to_string_lossy(), "-R", "-X", "stream"],
        );
        let port = free_port();
        let conf = format!(
            "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.display()
        );
        append_conf(&data, &conf);
        let c = Cluster {
            name: "standby".to_string(),
            port,
            dir,
        };
        c.pg_ctl_start();
        c
    }

    /// The cluster's own folder (data directory, socket, log), for files a test writes beside it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a PostgreSQL client program (pg_dump, pg_restore, ...) against this cluster as the postgres user;
    /// panics with its stderr when it fails.
    pub fn pg_tool(&self, program: &str, args: &[&str]) -> String {
        let port = self.port.to_string();
        let host = self.dir.to_string_lossy().into_owned();
        let mut all = vec!["-h", &host, "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        let out = pg(program, &all);
        assert!(
            out.status.success(),
            "{}: {program} {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts it again after [`Cluster::stop`] or [`Cluster::crash`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// From now on TCP connections must authenticate with `method` (md5 or scram-sha-256) and this password.
    pub async fn require_password(&self, method: &str, password: &str) {
        let encryption = if method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        self.connect("postgres")
            .await
            .batch_execute(&format!(
                "SET password_encryption = '{encryption}'; ALTER USER postgres PASSWORD '{password}'"
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: set password: {e}", self.name));
        let hba = format!(
            "local all all trust\nhost all all 127.0.0.1/32 {method}\nhost replication all 127.0.0.1/32 {method}\n"
        );
        let path = self.dir.join("data").join("pg_hba.conf");
        std::fs::write(&path, hba).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let out = pg("pg_ctl", &["-D", &self.data(), "reload"]);
        assert!(out.status.success(), "{}: reload failed", self.name);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// From now on TCP connections must use TLS (`hostssl`), authenticating with `method` (trust, md5 or
    /// scram-sha-256; with a password, it is set first). The cluster must run with `ssl = on`.
    pub async fn require_tls(&self, method: &str, password: Option<&str>) {
        if let Some(password) = password {
            self.connect("postgres")
                .await
                .batch_execute(&format!(
                    "SET password_encryption = 'scram-sha-256'; ALTER USER postgres PASSWORD '{password}'"
                ))
                .await
                .unwrap_or_else(|e| panic!("{}: set password: {e}", self.name));
        }
        let mut hba = String::from("local all all trust\n");
        for net in ["127.0.0.1/32", "::1/128"] {
            hba.push_str(&format!(
                "hostssl all all {net} {method}\nhostssl replication all {net} {method}\n"
            ));
        }
        let path = self.dir.join("data").join("pg_hba.conf");
        std::fs::write(&path, hba).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let out = pg("pg_ctl", &["-D", &self.data(), "reload"]);
        assert!(out.status.success(), "{}: reload failed", self.name);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// A URL carrying a password.
    pub fn url_with_password(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A client over the cluster's Unix socket (trust, whatever TCP requires).
    pub async fn connect(&self, db: &str) -> Client {
        let conninfo = format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&conninfo, NoTls)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot connect to {db}: {e}", self.name));
        tokio::spawn(conn);
        client
    }

    pub async fn create_database(&self, db: &str) {
        self.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap_or_else(|e| panic!("{}: CREATE DATABASE {db}: {e}", self.name));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A POS cluster (wal_level=logical) with an empty database `pos`, for a POS schema of the test's own.
pub async fn empty_pos_cluster() -> Cluster {
    let c = Cluster::start("pos", true, &[]);
    c.create_database("pos").await;
    c
}

/// The single bigint a query returns (a count, mostly); panics naming the query when it fails.
pub async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `sql` counts at least `want`; panics after `within` with `context()` (a bridge log, say).
pub async fn wait_count(
    db: &Client,
    sql: &str,
    want: i64,
    within: Duration,
    context: impl Fn() -> String,
) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let n = count(db, sql).await;
        if n >= want {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {want} after {within:?}: {sql}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `possync-bridge check` with these arguments: its exit code and everything it printed.
pub fn bridge_check(args: &[&str]) -> (i32, String) {
    let out = Command::new(bridge_binary())
        .arg("check")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run possync-bridge check: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A process's peak resident memory (VmHWM) in MB, NaN when it cannot be read.
pub fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A POS cluster with the reference schema in database `pos`.
pub async fn pos_cluster(extra: &[&str]) -> Cluster {
    let c = Cluster::start("pos", true, extra);
    c.create_database("pos").await;
    c.connect("pos")
        .await
        .batch_execute(POS_SCHEMA)
        .await
        .unwrap_or_else(|e| panic!("POS schema: {e}"));
    c
}

/// The SKUs the workload sells; the ERP knows them.
pub const SKUS: [&str; 4] = ["TSHIRT-M", "JEANS-32", "CAP", "SOCKS"];
pub const STORE: &str = "S042";

/// An ERP cluster with possync installed (the real extension), the default chart, the store and the items.
pub async fn erp_cluster() -> Cluster {
    erp_cluster_with(&[]).await
}

/// An ERP cluster with extra postgresql.conf lines (they win over the defaults above).
pub async fn erp_cluster_with(extra: &[&str]) -> Cluster {
    let c = Cluster::start("erp", false, extra);
    c.create_database("erp").await;
    let erp = c.connect("erp").await;
    if let Err(e) = erp.batch_execute("CREATE EXTENSION possync").await {
        panic!(
            "the possync extension is not installed in PostgreSQL 15 ({}): run `make install` at the repository root before `cargo test -p possync-e2e`",
            e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
        );
    }
    let mut setup = format!(
        "SELECT possync.install_default_chart();
         INSERT INTO possync.location (location_id, name) VALUES ('{STORE}', 'Store 42');"
    );
    for sku in SKUS {
        setup.push_str(&format!(
            "INSERT INTO possync.item (sku, description, standard_cost) VALUES ('{sku}', '{sku}', 5.00);"
        ));
    }
    erp.batch_execute(&setup)
        .await
        .unwrap_or_else(|e| panic!("ERP master data: {e}"));
    c
}

/// The possync-bridge binary, built on first use with the same profile and target directory as the tests.
pub fn bridge_path() -> PathBuf {
    bridge_binary()
}

fn bridge_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // the test binary lives in <target>/<profile>/deps; the bridge in <target>/<profile>
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        // test binaries live in <target>/<profile>/deps, the bench binary in <target>/<profile>
        let mut profile_dir = exe
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| panic!("unexpected binary location {}", exe.display()));
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        let target_dir = profile_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "possync-bridge",
            "--bin",
            "possync-bridge",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "cannot build the possync-bridge binary");
        profile_dir.join("possync-bridge")
    })
    .clone()
}

/// A running bridge process.
pub struct Bridge {
    child: Child,
    pub metrics_port: u16,
    log: PathBuf,
}

impl Bridge {
    /// Starts `possync-bridge run` for the given sources (name, URL).
    pub fn start(erp_url: &str, sources: &[(&str, String)], extra: &[&str]) -> Bridge {
        Bridge::spawn("127.0.0.1", &[], erp_url, sources, extra)
    }

    /// Starts the bridge with its metrics and dashboard on `host` (such as `0.0.0.0`) and extra environment
    /// variables (`POSSYNC_BRIDGE_TOKEN` is taken from `env` only).
    pub fn start_on(
        host: &str,
        env: &[(&str, &str)],
        erp_url: &str,
        sources: &[(&str, String)],
        extra: &[&str],
    ) -> Bridge {
        Bridge::spawn(host, env, erp_url, sources, extra)
    }

    /// Waits for the process to exit by itself; its exit code, or `None` if it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn spawn(
        host: &str,
        env: &[(&str, &str)],
        erp_url: &str,
        sources: &[(&str, String)],
        extra: &[&str],
    ) -> Bridge {
        let metrics_port = free_port();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let log = workspace_root()
            .join("target")
            .join("e2e")
            .join(format!("bridge-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("bridge log: {e}"));
        let mut cmd = Command::new(bridge_binary());
        cmd.arg("run").arg("--erp").arg(erp_url);
        for (name, url) in sources {
            cmd.arg("--source").arg(format!("{name}={url}"));
        }
        cmd.arg("--metrics").arg(format!("{host}:{metrics_port}"));
        cmd.args(extra);
        cmd.env_remove("POSSYNC_BRIDGE_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("POSSYNC_LOG", "info,possync_bridge=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the bridge: {e}"));
        Bridge {
            child,
            metrics_port,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }

    /// The bridge's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path on the metrics endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        self.http_get_from("127.0.0.1", path, None)
    }

    /// GET a path from `host` with an optional `Authorization` header value: (status code, body).
    pub fn http_get_from(
        &self,
        host: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> Option<(u16, String)> {
        let mut s = TcpStream::connect((host, self.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// Waits until the source streams (its slot and publication exist).
    pub fn wait_streaming(&self, source: &str, within: Duration) {
        self.wait_streaming_with(source, None, within)
    }

    /// [`Bridge::wait_streaming`] with an `Authorization` header value.
    pub fn wait_streaming_with(&self, source: &str, authorization: Option<&str>, within: Duration) {
        let deadline = Instant::now() + within;
        while self.metric_with("possync_bridge_streaming", source, authorization) != Some(1.0) {
            assert!(
                Instant::now() < deadline,
                "{source} did not start streaming within {within:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A metric's value for a source, read over HTTP.
    pub fn metric(&self, name: &str, source: &str) -> Option<f64> {
        self.metric_with(name, source, None)
    }

    /// [`Bridge::metric`] with an `Authorization` header value.
    pub fn metric_with(
        &self,
        name: &str,
        source: &str,
        authorization: Option<&str>,
    ) -> Option<f64> {
        let (_, body) = self.http_get_from("127.0.0.1", "/metrics", authorization)?;
        let prefix = format!("{name}{{source=\"{source}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One generated POS sale: 3 lines and 1 tender that pays it exactly. Each workload prefix is its own register,
/// so register sequences stay gap-free and unique, as the ERP's sales audit expects.
pub fn sale_sql(register: &str, txn_id: &str, seq: i64) -> String {
    let mut rng = rand::thread_rng();
    let mut sql = format!(
        "BEGIN; INSERT INTO pos.sale (txn_id, store_id, register_id, seq, kind, business_date) VALUES ('{txn_id}', '{STORE}', '{register}', {seq}, 'sale', '2026-11-26');"
    );
    let mut total = Decimal::ZERO;
    for line in 1..=3 {
        let sku = SKUS[rng.gen_range(0..SKUS.len())];
        let qty = Decimal::from(rng.gen_range(1..4));
        let price = Decimal::new(rng.gen_range(100..5000), 2);
        // at most 40 % of the line's gross: a discount above half of it raises suspicious_discount, which a
        // generated healthy sale must not (a 0.82 discount on a 1.58 line once made a test see one)
        let discount = if rng.gen_bool(0.3) {
            Decimal::new(rng.gen_range(1..100), 2)
                .min((qty * price * Decimal::new(4, 1)).round_dp(2))
        } else {
            Decimal::ZERO
        };
        let tax = ((qty * price - discount) * Decimal::new(8875, 5)).round_dp(2);
        total += qty * price - discount + tax;
        sql.push_str(&format!(
            "INSERT INTO pos.sale_line (txn_id, line_no, sku, qty, unit_price, discount, tax, tax_code) VALUES ('{txn_id}', {line}, '{sku}', {qty}, {price}, {discount}, {tax}, 'NY');"
        ));
    }
    let tender = if rng.gen_bool(0.5) { "card" } else { "cash" };
    sql.push_str(&format!(
        "INSERT INTO pos.tender (txn_id, tender_no, tender_type, amount) VALUES ('{txn_id}', 1, '{tender}', {total}); COMMIT;"
    ));
    sql
}

/// Commits `count` sales at about `per_second` on register `prefix`, returning the slowest commit.
pub async fn run_sales(
    pos: &Client,
    prefix: &str,
    first_seq: i64,
    count: i64,
    per_second: u32,
) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    for i in 0..count {
        ticker.tick().await;
        let seq = first_seq + i;
        let sql = sale_sql(prefix, &format!("{prefix}-{seq:06}"), seq);
        let started = Instant::now();
        pos.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("POS sale {seq}: {e}"));
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Sales totals computed from the POS tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Totals {
    pub transactions: i64,
    pub net: Decimal,
    pub tax: Decimal,
    pub qty: Decimal,
    /// tender type → amount
    pub tenders: BTreeMap<String, Decimal>,
}

fn dec(row: &tokio_postgres::Row, i: usize) -> Decimal {
    let s: Option<String> = row.get(i);
    s.and_then(|s| s.parse().ok()).unwrap_or_default()
}

pub async fn pos_totals(pos: &Client) -> Totals {
    let r = pos
        .query_one(
            "SELECT (SELECT count(*) FROM pos.sale), sum(qty * unit_price - discount)::text, sum(tax)::text, sum(qty)::text FROM pos.sale_line",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("POS totals: {e}"));
    let mut t = Totals {
        transactions: r.get(0),
        net: dec(&r, 1),
        tax: dec(&r, 2),
        qty: dec(&r, 3),
        ..Totals::default()
    };
    for r in pos
        .query(
            "SELECT tender_type, sum(amount)::text FROM pos.tender GROUP BY 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("POS tenders: {e}"))
    {
        t.tenders.insert(r.get(0), dec(&r, 1));
    }
    t
}

/// The same totals as the ERP posted them: revenue, tax payable and tender accounts from the general ledger,
/// quantity from the stock ledger, one transaction per applied sale event.
pub async fn erp_totals(erp: &Client, source: &str) -> Totals {
    let r = erp
        .query_one(
            "SELECT (SELECT count(*) FROM possync.event WHERE source = $1 AND kind = 'sale' AND status = 'applied'),
                    (SELECT sum(credit - debit)::text FROM possync.journal_line WHERE account_code = '4000'),
                    (SELECT sum(credit - debit)::text FROM possync.journal_line WHERE account_code = '2100'),
                    (SELECT (-sum(qty))::text FROM possync.stock_move)",
            &[&source],
        )
        .await
        .unwrap_or_else(|e| panic!("ERP totals: {e}"));
    let mut t = Totals {
        transactions: r.get(0),
        net: dec(&r, 1),
        tax: dec(&r, 2),
        qty: dec(&r, 3),
        ..Totals::default()
    };
    // default chart: cash 1000, every other tender 1010
    let r = erp
        .query_one(
            "SELECT (SELECT sum(debit - credit)::text FROM possync.journal_line WHERE account_code = '1000'),
                    (SELECT sum(debit - credit)::text FROM possync.journal_line WHERE account_code = '1010')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("ERP tenders: {e}"));
    let cash = dec(&r, 0);
    let card = dec(&r, 1);
    if !cash.is_zero() {
        t.tenders.insert("cash".into(), cash);
    }
    if !card.is_zero() {
        t.tenders.insert("card".into(), card);
    }
    t
}

/// Events of a source per event id that appear more than once, and journals per event more than one.
pub async fn doubled(erp: &Client) -> i64 {
    erp.query_one(
        "SELECT count(*) FROM (SELECT event_id FROM possync.journal GROUP BY event_id HAVING count(*) > 1) d",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or_else(|e| panic!("ERP journals: {e}"))
}

/// Waits until the ERP has as many applied sale events from `source` as the POS has sales.
pub async fn wait_caught_up(erp_url: &str, pos: &Client, source: &str, within: Duration) -> i64 {
    let want: i64 = pos
        .query_one("SELECT count(*) FROM pos.sale", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("POS count: {e}"));
    let deadline = Instant::now() + within;
    let mut have = -1;
    while Instant::now() < deadline {
        if let Ok((erp, conn)) = tokio_postgres::connect(erp_url, NoTls).await {
            tokio::spawn(conn);
            if let Ok(r) = erp
                .query_one(
                    "SELECT count(*) FROM possync.event WHERE source = $1 AND kind = 'sale'",
                    &[&source],
                )
                .await
            {
                have = r.get(0);
                if have >= want {
                    return have;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the ERP holds {have} of {want} sales from {source} after {within:?}");
}
