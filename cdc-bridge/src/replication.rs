//! A logical replication connection (`replication=database`) over pgwire's client codec and authentication.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::client::auth::{DefaultStartupHandler, StartupHandler};
use pgwire::api::client::{ClientInfo, Config, ServerInformation};
use pgwire::error::{PgWireClientError, PgWireClientResult, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::messages::response::ReadyForQuery;
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{Authentication, BackendKeyData, Startup};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::client::PgWireClient;

use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Why the replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid POS connection URL: {}", describe_client_error(.0))]
    Url(PgWireClientError),
    #[error("POS connection TLS settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot connect to the POS for replication: {}", describe_client_error(.0))]
    Connect(PgWireClientError),
    #[error("POS replication protocol error: {0}")]
    Protocol(#[from] PgWireError),
    #[error("POS server reported {code}: {message}{}{}", .detail.as_ref().map(|d| format!("; DETAIL: {d}")).unwrap_or_default(), .hint.as_ref().map(|h| format!("; HINT: {h}")).unwrap_or_default())]
    Server {
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("POS closed the replication connection")]
    Closed,
    #[error("unexpected message from the POS during {0}")]
    Unexpected(&'static str),
    #[error("malformed replication message: {0}")]
    Malformed(&'static str),
}

/// A pgwire client error; a server's error response with its SQLSTATE, message, detail and hint.
fn describe_client_error(e: &PgWireClientError) -> String {
    match e {
        PgWireClientError::RemoteError(info) => {
            let mut s = format!("{} {}: {}", info.severity, info.code, info.message);
            if let Some(d) = &info.detail {
                s.push_str("; DETAIL: ");
                s.push_str(d);
            }
            if let Some(h) = &info.hint {
                s.push_str("; HINT: ");
                s.push_str(h);
            }
            s
        }
        other => other.to_string(),
    }
}

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub wal_position: Lsn,
    pub database: String,
}

/// What pg_replication_slots says about a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// `lost` once the WAL the slot needs was removed (max_slot_wal_keep_size): it can never stream again.
    pub wal_status: String,
    pub confirmed_flush: Lsn,
}

/// A message of the CopyBoth stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// WAL data: one pgoutput message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's keepalive; `reply_requested` asks for a status update at once.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// Startup with `replication=database`; authentication (trust, md5, SCRAM-SHA-256) is pgwire's.
struct ReplicationStartup {
    inner: DefaultStartupHandler,
}

#[async_trait]
impl StartupHandler for ReplicationStartup {
    async fn startup<C>(&mut self, client: &mut C) -> PgWireClientResult<()>
    where
        C: ClientInfo + Sink<PgWireFrontendMessage> + Unpin + Send,
        PgWireClientError: From<<C as Sink<PgWireFrontendMessage>>::Error>,
    {
        let mut startup = Startup::new();
        let config = client.config();
        let mut put = |k: &str, v: &str| {
            startup.parameters.insert(k.to_string(), v.to_string());
        };
        if let Some(user) = config.get_user() {
            put("user", user);
        }
        if let Some(db) = config.get_dbname() {
            put("database", db);
        }
        put(
            "application_name",
            config.get_application_name().unwrap_or("possync-bridge"),
        );
        put("replication", "database");
        // pgoutput prints values with the session's settings: make timestamps unambiguous
        put("DateStyle", "ISO");
        put("TimeZone", "UTC");
        put("client_encoding", "UTF8");
        client.send(PgWireFrontendMessage::Startup(startup)).await?;
        Ok(())
    }

    async fn on_authentication<C>(
        &mut self,
        client: &mut C,
        message: Authentication,
    ) -> PgWireClientResult<()>
    where
        C: ClientInfo
            + Stream<Item = PgWireResult<PgWireBackendMessage>>
            + Sink<PgWireFrontendMessage>
            + Unpin
            + Send,
        PgWireClientError: From<<C as Sink<PgWireFrontendMessage>>::Error>,
    {
        self.inner.on_authentication(client, message).await
    }

    async fn on_backend_key<C>(
        &mut self,
        client: &mut C,
        message: BackendKeyData,
    ) -> PgWireClientResult<()>
    where
        C: ClientInfo + Sink<PgWireFrontendMessage> + Unpin + Send,
        PgWireClientError: From<<C as Sink<PgWireFrontendMessage>>::Error>,
    {
        self.inner.on_backend_key(client, message).await
    }

    async fn on_ready_for_query<C>(
        &mut self,
        client: &mut C,
        message: ReadyForQuery,
    ) -> PgWireClientResult<ServerInformation>
    where
        C: ClientInfo + Sink<PgWireFrontendMessage> + Unpin + Send,
        PgWireClientError: From<<C as Sink<PgWireFrontendMessage>>::Error>,
    {
        self.inner.on_ready_for_query(client, message).await
    }
}

/// Rows of a simple query, each column as text (None for NULL).
type Rows = Vec<Vec<Option<String>>>;

/// A connection to a POS server in replication mode.
pub struct ReplicationConnection {
    client: PgWireClient,
}

fn server_error(fields: &[(u8, String)]) -> ReplicationError {
    let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
    ReplicationError::Server {
        code: get(b'C').unwrap_or_default(),
        message: get(b'M').unwrap_or_default(),
        detail: get(b'D'),
        hint: get(b'H'),
    }
}

fn data_row(data: &[u8]) -> Result<Vec<Option<String>>, ReplicationError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len_bytes: [u8; 4] = data
            .get(pos..pos + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or(ReplicationError::Malformed("DataRow column length"))?;
        let len = i32::from_be_bytes(len_bytes);
        pos += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = data
            .get(pos..pos + len as usize)
            .ok_or(ReplicationError::Malformed("DataRow column value"))?;
        out.push(Some(String::from_utf8_lossy(v).into_owned()));
        pos += len as usize;
    }
    Ok(out)
}

fn be_u64(b: &[u8], at: usize, what: &'static str) -> Result<u64, ReplicationError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(ReplicationError::Malformed(what))
}

/// Now as microseconds since 2000-01-01 UTC.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    unix - PG_EPOCH_OFFSET_MICROS
}

impl ReplicationConnection {
    /// Connects and authenticates with `replication=database`. The URL's password is never logged.
    pub async fn connect(url: &str) -> Result<ReplicationConnection, ReplicationError> {
        let (url, tls) = crate::tls::for_replication(url)?;
        let config = Config::from_str(&url).map_err(ReplicationError::Url)?;
        let handler = ReplicationStartup {
            inner: DefaultStartupHandler::new(),
        };
        let client = PgWireClient::connect(Arc::new(config), handler, tls)
            .await
            .map_err(ReplicationError::Connect)?;
        Ok(ReplicationConnection { client })
    }

    async fn send(&mut self, msg: PgWireFrontendMessage) -> Result<(), ReplicationError> {
        self.client.send(msg).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<PgWireBackendMessage, ReplicationError> {
        match self.client.next().await {
            Some(m) => Ok(m?),
            None => Err(ReplicationError::Closed),
        }
    }

    /// Runs a simple query (SQL or a replication command) and returns its rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, ReplicationError> {
        self.send(PgWireFrontendMessage::Query(Query::new(sql.to_string())))
            .await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await? {
                PgWireBackendMessage::DataRow(r) => rows.push(data_row(&r.data)?),
                PgWireBackendMessage::ErrorResponse(e) => error = Some(server_error(&e.fields)),
                PgWireBackendMessage::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or(ReplicationError::Malformed(
            "IDENTIFY_SYSTEM returned no row",
        ))?;
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemIdentity {
            system_id: col(0),
            timeline: col(1).parse().unwrap_or_default(),
            wal_position: col(2)
                .parse()
                .map_err(|_| ReplicationError::Malformed("IDENTIFY_SYSTEM xlogpos"))?,
            database: col(3),
        })
    }

    /// The slot's WAL status (`reserved`, `extended`, `unreserved` or `lost`) and confirmed position; None when
    /// there is no such slot.
    pub async fn slot_state(&mut self, slot: &str) -> Result<Option<SlotState>, ReplicationError> {
        let rows = self
            .simple_query(&format!(
                "SELECT coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(Some(SlotState {
            wal_status: col(0),
            confirmed_flush: col(1)
                .parse()
                .map_err(|_| ReplicationError::Malformed("confirmed_flush_lsn"))?,
        }))
    }

    /// Creates the logical slot with pgoutput; returns its consistent point (where its stream starts).
    pub async fn create_slot(&mut self, slot: &str) -> Result<Lsn, ReplicationError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput NOEXPORT_SNAPSHOT"
            ))
            .await?;
        rows.first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|s| s.parse().ok())
            .ok_or(ReplicationError::Malformed(
                "CREATE_REPLICATION_SLOT consistent_point",
            ))
    }

    /// Creates the slot and exports its snapshot: the POS as of the slot's consistent point, which another
    /// connection can read with `SET TRANSACTION SNAPSHOT` for as long as this connection runs no other command.
    /// Returns (consistent point, snapshot name).
    pub async fn create_slot_exporting(
        &mut self,
        slot: &str,
    ) -> Result<(Lsn, String), ReplicationError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT"
            ))
            .await?;
        let row = rows.first().ok_or(ReplicationError::Malformed(
            "CREATE_REPLICATION_SLOT returned no row",
        ))?;
        let at = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .ok_or(ReplicationError::Malformed(
                "CREATE_REPLICATION_SLOT consistent_point",
            ))?;
        let snapshot = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or(ReplicationError::Malformed(
                "CREATE_REPLICATION_SLOT snapshot_name",
            ))?;
        Ok((at, snapshot))
    }

    /// Drops the slot (it must not be in use).
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), ReplicationError> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {slot}"))
            .await?;
        Ok(())
    }

    /// Creates the logical slot with pgoutput unless it exists; true when it was created.
    pub async fn ensure_slot(&mut self, slot: &str) -> Result<bool, ReplicationError> {
        let exists = self
            .simple_query(&format!(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await?;
        if !exists.is_empty() {
            return Ok(false);
        }
        self.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        ))
        .await?;
        Ok(true)
    }

    /// START_REPLICATION from `from` (0/0: from the slot's confirmed position); enters CopyBoth.
    pub async fn start(
        &mut self,
        slot: &str,
        publication: &str,
        from: Lsn,
    ) -> Result<(), ReplicationError> {
        let cmd = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {from} (proto_version '1', publication_names '{publication}')"
        );
        self.send(PgWireFrontendMessage::Query(Query::new(cmd)))
            .await?;
        loop {
            match self.next().await? {
                PgWireBackendMessage::CopyBothResponse(_) => return Ok(()),
                PgWireBackendMessage::ErrorResponse(e) => return Err(server_error(&e.fields)),
                PgWireBackendMessage::NoticeResponse(_)
                | PgWireBackendMessage::ParameterStatus(_) => {}
                _ => return Err(ReplicationError::Unexpected("START_REPLICATION")),
            }
        }
    }

    /// The next XLogData or keepalive. Cancel-safe.
    pub async fn recv(&mut self) -> Result<StreamMessage, ReplicationError> {
        loop {
            let data = match self.next().await? {
                PgWireBackendMessage::CopyData(d) => d.data,
                PgWireBackendMessage::ErrorResponse(e) => return Err(server_error(&e.fields)),
                PgWireBackendMessage::CopyDone(_) => return Err(ReplicationError::Closed),
                PgWireBackendMessage::NoticeResponse(_)
                | PgWireBackendMessage::ParameterStatus(_) => continue,
                _ => return Err(ReplicationError::Unexpected("streaming")),
            };
            return match data.first() {
                Some(b'w') => {
                    if data.len() < 25 {
                        return Err(ReplicationError::Malformed("XLogData header"));
                    }
                    Ok(StreamMessage::XLogData {
                        wal_start: Lsn(be_u64(&data, 1, "XLogData start")?),
                        wal_end: Lsn(be_u64(&data, 9, "XLogData end")?),
                        data: data.slice(25..),
                    })
                }
                Some(b'k') => Ok(StreamMessage::Keepalive {
                    wal_end: Lsn(be_u64(&data, 1, "keepalive WAL end")?),
                    reply_requested: data.get(17).copied().unwrap_or(0) == 1,
                }),
                _ => Err(ReplicationError::Malformed("unknown CopyData message")),
            };
        }
    }

    /// Standby status update: `flush` must be a position the ERP has committed.
    pub async fn send_status(&mut self, received: Lsn, flush: Lsn) -> Result<(), ReplicationError> {
        let mut b = BytesMut::with_capacity(34);
        b.put_u8(b'r');
        b.put_u64(received.0);
        b.put_u64(flush.0);
        b.put_u64(flush.0);
        b.put_i64(pg_now_micros());
        b.put_u8(0);
        self.send(PgWireFrontendMessage::CopyData(CopyData::new(b.freeze())))
            .await
    }
}
