//! `possync-bridge`: run, check and status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use possync_bridge::dashboard::{self, Dashboard};
use possync_bridge::mapping::Mapping;
use possync_bridge::metrics::Registry;
use possync_bridge::source::{self, ApplySettings, Source};
use serde::Deserialize;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "possync-bridge",
    version,
    about = "Stream POS databases into possync over logical replication, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream every source into the ERP until SIGTERM or ctrl-c.
    Run(Settings),
    /// Check wal_level, privileges, mapped tables, slot and publication; exit 1 on a problem.
    Check(Settings),
    /// Per source: checkpoint, lag, held and rejected events.
    Status(Settings),
    /// After a slot loss the bridge refused: make the new slot, re-read the POS rows of a range of business
    /// dates, post what the ERP lacks (by event id, exactly once) and let the bridge stream again.
    Resync(ResyncArgs),
    /// After a document mapping was corrected: evaluate every settled header again from the ERP's mirror and
    /// resubmit the events the ERP holds as rejected, without re-reading the POS.
    Remap(Settings),
}

#[derive(Args, Clone)]
struct ResyncArgs {
    #[command(flatten)]
    settings: Settings,
    /// First business date to re-read (YYYY-MM-DD).
    #[arg(long)]
    from: String,
    /// Last business date to re-read (YYYY-MM-DD).
    #[arg(long)]
    to: String,
    /// Resync only this source of the config file (default: every source given).
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
}

#[derive(Args, Clone, Default)]
struct Settings {
    /// ERP database URL (postgres://...); may come from POSSYNC_ERP_URL.
    #[arg(long, env = "POSSYNC_ERP_URL", hide_env_values = true)]
    erp: Option<String>,
    /// A POS source as NAME=URL; repeat for several.
    #[arg(long = "source", value_name = "NAME=URL")]
    sources: Vec<String>,
    /// Mapping file (TOML); without it the reference POS schema is mapped.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Address for /metrics and /healthz, such as 127.0.0.1:9187.
    #[arg(long)]
    metrics: Option<String>,
    /// Config file (TOML) saying the same; "${VAR}" in its URLs is read from the environment (unset: an error).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Most POS transactions per apply_batch call.
    #[arg(long, default_value_t = 300)]
    batch_max_txns: usize,
    /// Longest wait in milliseconds for more transactions once one is ready (0: apply what has arrived; the
    /// transactions that arrive while a batch is applied make the next batch).
    #[arg(long, default_value_t = 0)]
    batch_max_wait_ms: u64,
    /// Make each apply_batch commit wait for the ERP's WAL flush. By default the ERP commits asynchronously, as
    /// PostgreSQL's own subscriptions do, and the POS is told a position only once the ERP has flushed it, so
    /// an ERP crash loses nothing: what it lost is streamed again.
    #[arg(long)]
    erp_synchronous_commit: bool,
    /// Seconds the owner of a source may go without a word to the ERP (frozen, hung, cut off) before its ERP
    /// session ends and a standby bridge takes the source over (idle_session_timeout; a healthy owner speaks every
    /// second).
    #[arg(long, default_value_t = 10)]
    owner_timeout_s: u64,
    /// Past this many row changes, a POS transaction is written to a file and posted from there, so that the
    /// bridge's memory does not grow with what a till commits in one transaction (about 1 KB per change held).
    #[arg(long, default_value_t = 20_000)]
    spill_after_changes: usize,
    /// Directory for those files (default: the system's temporary directory).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Apply each source in this many ERP sessions at once, split by location (each location's transactions stay
    /// in commit order in one session, each session keeps its own checkpoint). 1 to 64; an event mapping only (a
    /// document mapping's mirror is applied in one session).
    #[arg(long, default_value_t = 1)]
    apply_lanes: usize,
    /// Accept that a source's replication slot was lost: NAME=LSN, where LSN is the ERP checkpoint the bridge
    /// named when it refused the source. The bridge makes a new slot, records the accepted loss in the ERP and
    /// streams. A different checkpoint (a later loss) is still refused. Repeat for several sources.
    #[arg(long = "accept-slot-loss", value_name = "NAME=LSN")]
    accept_slot_loss: Vec<String>,
    /// check: show the events the N most recent final or cancelled headers of each document would become, and
    /// which would be rejected and why (a document mapping's dry run; nothing is written anywhere).
    #[arg(long, value_name = "N", default_value_t = 0)]
    dry_run: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    erp: Option<String>,
    mapping: Option<PathBuf>,
    metrics: Option<String>,
    batch_max_txns: Option<usize>,
    batch_max_wait_ms: Option<u64>,
    erp_synchronous_commit: Option<bool>,
    owner_timeout_s: Option<u64>,
    spill_after_changes: Option<usize>,
    spill_dir: Option<PathBuf>,
    apply_lanes: Option<usize>,
    #[serde(default)]
    source: BTreeMap<String, String>,
}

/// Everything `run` needs, resolved from arguments, config file and environment.
struct Resolved {
    erp: String,
    sources: Vec<Source>,
    mapping: Mapping,
    metrics: Option<String>,
    apply: ApplySettings,
    dry_run: u32,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only the position and the parser's message: toml's own rendering quotes the offending line, which may
    /// hold a password.
    #[error("config file {path}: {where_}{message}")]
    Config {
        path: PathBuf,
        where_: String,
        message: String,
    },
    /// A `${VAR}` the environment does not set; names the variable and the setting, never the value.
    #[error("config file {path}: {setting} refers to ${{{var}}}, which is not set in the environment (with systemd, set it in /etc/possync/bridge.env)")]
    UnsetVariable {
        path: PathBuf,
        setting: String,
        var: String,
    },
    #[error("config file {path}: {setting} has a malformed variable reference ({problem}); write ${{NAME}} with NAME made of letters, digits and _")]
    BadVariable {
        path: PathBuf,
        setting: String,
        problem: &'static str,
    },
    /// Names the setting, never the URL (it may hold a password).
    #[error("{setting}: {source}")]
    Tls {
        setting: String,
        source: possync_bridge::tls::TlsError,
    },
    #[error("mapping {path}: {source}")]
    Mapping {
        path: PathBuf,
        source: possync_bridge::mapping::MappingError,
    },
}

/// Replaces every `${NAME}` in a config value with the environment variable NAME. A variable that is not set, or
/// a reference that is not `${NAME}`, is an error naming the setting and the variable (values are never shown).
fn expand_env(
    value: &str,
    setting: &str,
    path: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, CliError> {
    let bad = |problem| CliError::BadVariable {
        path: path.to_path_buf(),
        setting: setting.to_string(),
        problem,
    };
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| bad("a ${ without its closing }"))?;
        let var = &after[..end];
        if var.is_empty()
            || var.starts_with(|c: char| c.is_ascii_digit())
            || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad("not a variable name"));
        }
        let val = lookup(var).ok_or_else(|| CliError::UnsetVariable {
            path: path.to_path_buf(),
            setting: setting.to_string(),
            var: var.to_string(),
        })?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn from_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })
}

fn parse_config(path: &Path, text: &str) -> Result<ConfigFile, CliError> {
    toml::from_str(text).map_err(|e| {
        let where_ = e
            .span()
            .map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        CliError::Config {
            path: path.to_path_buf(),
            where_,
            message: e.message().trim_end().to_string(),
        }
    })
}

fn resolve(s: &Settings, need_sources: bool) -> Result<Resolved, CliError> {
    let no_file = PathBuf::new();
    let config_path = s.config.as_ref().unwrap_or(&no_file);
    let file: ConfigFile = match &s.config {
        Some(path) => parse_config(path, &read(path)?)?,
        None => ConfigFile::default(),
    };
    let erp = match (&s.erp, &file.erp) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) => expand_env(url, "erp", config_path, from_env)?,
        (None, None) => {
            return Err(CliError::Usage(
                "give the ERP database with --erp URL (or erp = \"...\" in --config)".into(),
            ))
        }
    };
    let mut sources: Vec<Source> = Vec::with_capacity(file.source.len() + s.sources.len());
    for (name, url) in &file.source {
        sources.push(Source {
            name: name.clone(),
            url: expand_env(url, &format!("source.{name}"), config_path, from_env)?,
            accept_slot_loss: None,
        });
    }
    for spec in &s.sources {
        let (name, url) = spec.split_once('=').ok_or_else(|| {
            CliError::Usage(format!(
                "--source takes NAME=URL; got \"{}\"",
                spec.split('=').next().unwrap_or_default()
            ))
        })?;
        if name.is_empty() || name.len() > 40 {
            return Err(CliError::Usage(
                "a source name must be 1 to 40 characters".into(),
            ));
        }
        sources.push(Source {
            name: name.to_string(),
            url: url.to_string(),
            accept_slot_loss: None,
        });
    }
    for spec in &s.accept_slot_loss {
        let usage = || {
            CliError::Usage(format!(
                "--accept-slot-loss takes NAME=LSN, the source and the checkpoint the bridge named when it refused it; got \"{spec}\""
            ))
        };
        let (name, lsn) = spec.split_once('=').ok_or_else(usage)?;
        let lsn: possync_bridge::lsn::Lsn = lsn.parse().map_err(|_| usage())?;
        let source = sources.iter_mut().find(|s| s.name == name).ok_or_else(|| {
            CliError::Usage(format!(
                "--accept-slot-loss names {name}, which is not a source"
            ))
        })?;
        source.accept_slot_loss = Some(lsn);
    }
    // TLS settings (sslmode, sslrootcert) are checked before anything connects
    let tls = |setting: String, url: &str| {
        possync_bridge::tls::validate(url).map_err(|source| CliError::Tls { setting, source })
    };
    tls("the ERP URL".into(), &erp)?;
    for s in &sources {
        tls(format!("the URL of source {}", s.name), &s.url)?;
    }
    if need_sources && sources.is_empty() {
        return Err(CliError::Usage(
            "give at least one --source NAME=URL".into(),
        ));
    }
    let mapping = match s.mapping.clone().or(file.mapping) {
        Some(path) => Mapping::from_toml(&read(&path)?)
            .map_err(|source| CliError::Mapping { path, source })?,
        None => Mapping::reference(),
    };
    let apply_lanes = file.apply_lanes.unwrap_or(s.apply_lanes);
    if !(1..=possync_bridge::lanes::MAX_LANES).contains(&apply_lanes) {
        return Err(CliError::Usage(format!(
            "apply_lanes is {apply_lanes}: give 1 to {}",
            possync_bridge::lanes::MAX_LANES
        )));
    }
    if apply_lanes > 1 && !mapping.mirrors().is_empty() {
        return Err(CliError::Usage(format!(
            "apply_lanes is {apply_lanes}, but the mapping mirrors POS tables for documents: a document mapping is applied in one session (apply_lanes = 1)"
        )));
    }
    let apply = ApplySettings {
        apply_lanes,
        batch_max_txns: file.batch_max_txns.unwrap_or(s.batch_max_txns).max(1),
        batch_max_wait: Duration::from_millis(
            file.batch_max_wait_ms.unwrap_or(s.batch_max_wait_ms),
        ),
        erp_synchronous_commit: s.erp_synchronous_commit
            || file.erp_synchronous_commit.unwrap_or(false),
        // at least 3 s: a healthy owner speaks every second
        owner_timeout: Duration::from_secs(
            file.owner_timeout_s.unwrap_or(s.owner_timeout_s).max(3),
        ),
        spill_after_changes: file
            .spill_after_changes
            .unwrap_or(s.spill_after_changes)
            .max(1),
        spill_dir: s
            .spill_dir
            .clone()
            .or(file.spill_dir.clone())
            .unwrap_or_else(std::env::temp_dir),
        ..ApplySettings::default()
    };
    Ok(Resolved {
        erp,
        sources,
        mapping,
        metrics: s.metrics.clone().or(file.metrics),
        apply,
        dry_run: s.dry_run,
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSSYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (settings, need_sources) = match &cli.command {
        Command::Run(s) | Command::Check(s) => (s, true),
        Command::Resync(r) => (&r.settings, true),
        Command::Remap(s) => (s, true),
        Command::Status(s) => (s, false),
    };
    let resolved = match resolve(settings, need_sources) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("possync-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("possync-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run(_) => run(resolved).await,
            Command::Check(_) => {
                let findings = possync_bridge::check::check(
                    &resolved.erp,
                    &resolved.sources,
                    &resolved.mapping,
                    resolved.dry_run,
                )
                .await;
                let mut failed = false;
                for f in &findings {
                    println!("{} {}", if f.ok { "ok   " } else { "ERROR" }, f.what);
                    failed |= !f.ok;
                }
                if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Command::Remap(_) => {
                let mut failed = false;
                for s in &resolved.sources {
                    match possync_bridge::remap::remap(&resolved.erp, &s.name, &resolved.mapping)
                        .await
                    {
                        Ok(report) => {
                            println!(
                                "{}: evaluated {} settled headers; resubmitted {} rejected events, {} posted and resolved, {} still failing",
                                s.name,
                                report.evaluated,
                                report.resubmitted,
                                report.resolved,
                                report.still_failing.len()
                            );
                            for f in &report.still_failing {
                                println!("  still failing: {f}");
                            }
                            failed |= !report.still_failing.is_empty();
                        }
                        Err(e) => {
                            eprintln!("possync-bridge: remap {}: {e}", s.name);
                            failed = true;
                        }
                    }
                }
                if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Command::Resync(r) => {
                let mut failed = false;
                let chosen: Vec<&Source> = resolved
                    .sources
                    .iter()
                    .filter(|s| r.only.as_ref().is_none_or(|o| *o == s.name))
                    .collect();
                if chosen.is_empty() {
                    eprintln!("possync-bridge: resync: no source by that name");
                    return ExitCode::from(2);
                }
                for s in chosen {
                    match possync_bridge::resync::resync(
                        &resolved.erp,
                        s,
                        &resolved.mapping,
                        &r.from,
                        &r.to,
                    )
                    .await
                    {
                        Ok(report) => println!(
                            "{}: re-read {} events of business dates {} to {}: {} applied, {} duplicate, {} conflict, {} held, {} rejected; lost after {}, the new slot starts at {}",
                            s.name,
                            report.events_read,
                            r.from,
                            r.to,
                            report.outcome.applied_events,
                            report.outcome.duplicate,
                            report.outcome.conflict,
                            report.outcome.held,
                            report.outcome.rejected,
                            report.last_commit,
                            report.new_slot_start
                        ),
                        Err(e) => {
                            eprintln!("possync-bridge: resync {}: {e}", s.name);
                            failed = true;
                        }
                    }
                }
                if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Command::Status(_) => {
                match possync_bridge::check::status(&resolved.erp, &resolved.sources).await {
                    Ok(lines) => {
                        for l in lines {
                            println!("{l}");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("possync-bridge: status: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

async fn run(r: Resolved) -> ExitCode {
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(addr) = &r.metrics {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("possync-bridge: cannot read the address bound for {addr}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let access = match possync_bridge::http::Access::for_address(
                    bound,
                    std::env::var(possync_bridge::http::TOKEN_ENV).ok(),
                ) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(addr = %bound, "{e}");
                        eprintln!("possync-bridge: {e}");
                        return ExitCode::from(2);
                    }
                };
                tracing::info!(
                    addr = %bound,
                    token_required = access.requires_token(),
                    "serving /metrics, /healthz and the dashboard at /"
                );
                let dashboard = Arc::new(Dashboard::new(registry.clone()));
                tokio::spawn(dashboard::refresh(
                    dashboard.clone(),
                    r.erp.clone(),
                    stop_rx.clone(),
                ));
                tokio::spawn(possync_bridge::http::serve(
                    listener,
                    registry.clone(),
                    dashboard,
                    access,
                    stop_rx.clone(),
                ));
            }
            Err(e) => {
                eprintln!("possync-bridge: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mapping = Arc::new(r.mapping);
    let mut tasks = Vec::new();
    for s in r.sources {
        let metrics = registry.source(&s.name);
        tracing::info!(source = %s.name, slot = %s.slot(), "starting source");
        tasks.push(tokio::spawn(source::run(
            s,
            r.erp.clone(),
            mapping.clone(),
            r.apply.clone(),
            metrics,
            stop_rx.clone(),
        )));
    }
    wait_for_stop_signal().await;
    tracing::info!("stopping after the batches in flight");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    ExitCode::SUCCESS
}

async fn wait_for_stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the bridge");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_names_sources_and_reads_secrets_from_the_environment() {
        std::env::set_var("POSSYNC_TEST_PW", "s3cret");
        let dir = std::env::temp_dir().join(format!("possync-bridge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bridge.toml");
        std::fs::write(
            &path,
            "erp = \"postgres://bridge:${POSSYNC_TEST_PW}@erp/erp\"\nbatch_max_txns = 50\napply_lanes = 3\n[source]\nstore42 = \"postgres://b:${POSSYNC_TEST_PW}@pos42/pos\"\n",
        )
        .expect("write config");
        let settings = Settings {
            config: Some(path),
            sources: vec!["store7=postgres://b@pos7/pos".into()],
            batch_max_txns: 1000,
            apply_lanes: 1,
            ..Settings::default()
        };
        let r = resolve(&settings, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.apply.apply_lanes, 3);
        assert_eq!(r.erp, "postgres://bridge:s3cret@erp/erp");
        let names: Vec<&str> = r.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["store42", "store7"]);
        assert_eq!(r.sources[0].url, "postgres://b:s3cret@pos42/pos");
        assert_eq!(r.apply.batch_max_txns, 50);
        assert_eq!(
            r.mapping.tables().len(),
            7,
            "the reference mapping by default"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn config_file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("possync-bridge-cfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bridge.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn variables_expand_from_the_environment_and_an_unset_one_is_named() {
        let env = |var: &str| (var == "PW").then(|| "s3cret".to_string());
        let path = Path::new("/etc/possync/bridge.toml");
        let url = expand_env("postgres://b:${PW}@pos/pos?x=${PW}", "erp", path, env);
        assert_eq!(
            url.ok().as_deref(),
            Some("postgres://b:s3cret@pos/pos?x=s3cret")
        );
        assert_eq!(
            expand_env("no variables, $PW {PW} $", "erp", path, env)
                .ok()
                .as_deref(),
            Some("no variables, $PW {PW} $")
        );
        let unset = expand_env("postgres://b:${ERP_PASSWORD}@erp/erp", "erp", path, env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            unset.contains("${ERP_PASSWORD}") && unset.contains("erp refers to"),
            "{unset}"
        );
        for malformed in ["${PW", "${}", "${1PW}", "${P-W}", "${P W}"] {
            let err = expand_env(malformed, "source.store42", path, env);
            assert!(
                matches!(&err, Err(CliError::BadVariable { setting, .. }) if setting == "source.store42"),
                "{malformed}: {:?}",
                err.map_err(|e| e.to_string())
            );
        }
    }

    #[test]
    fn a_source_with_an_unset_variable_is_an_error_that_names_it_and_shows_no_secret() {
        std::env::set_var("POSSYNC_TEST_SET_PW", "hunter2");
        std::env::remove_var("POSSYNC_TEST_UNSET_PW");
        let path = config_file(
            "unset",
            "erp = \"postgres://bridge:${POSSYNC_TEST_SET_PW}@erp/erp\"\n[source]\nstore42 = \"postgres://b:${POSSYNC_TEST_UNSET_PW}@pos42/pos\"\n",
        );
        let settings = Settings {
            config: Some(path.clone()),
            ..Settings::default()
        };
        let err = resolve(&settings, true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("source.store42"), "{err}");
        assert!(err.contains("${POSSYNC_TEST_UNSET_PW}"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_config_file_that_does_not_parse_is_reported_by_position_without_its_text() {
        let path = config_file(
            "syntax",
            "# bridge\nerp = \"postgres://bridge:hunter2@erp/erp\" junk\n",
        );
        let settings = Settings {
            config: Some(path.clone()),
            ..Settings::default()
        };
        let err = resolve(&settings, true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("line 2, column"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn missing_erp_and_malformed_sources_are_usage_errors() {
        let no_erp = Settings::default();
        assert!(matches!(resolve(&no_erp, true), Err(CliError::Usage(_))));
        let bad = Settings {
            erp: Some("postgres://erp/erp".into()),
            sources: vec!["postgres://nameless".into()],
            ..Settings::default()
        };
        assert!(resolve(&bad, true).is_err_and(|e| e.to_string().contains("NAME=URL")));
    }
}
