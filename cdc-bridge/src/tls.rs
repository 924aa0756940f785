//! Connections to the POS and the ERP over tokio-postgres.

/// Connects to `url`; the connection's driver runs as its own task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %crate::pgerr::describe(&e), "connection ended");
        }
    });
    Ok(client)
}
