//! Portico's SQLite store: configuration history (a temporal table of objects), VIP allocations, users,
//! sessions, API tokens, the audit log and pending commit-confirms.
//!
//! One writer connection serializes every write (SQLite allows one writer anyway, and a single queue avoids
//! busy errors); readers use their own connections in WAL mode. `synchronous=FULL` makes every acknowledged
//! commit durable across power loss and `kill -9`.

mod auth;
mod config;

pub use auth::{AuditEntry, NewAuditEntry, Role, Session, Token, User};
pub use config::{AllocationDelta, NewRevision, PendingConfirm, RevisionInfo, Source, StoredObject, Write};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// 'PRTC': marks a database file as Portico's.
const APPLICATION_ID: i64 = 0x5052_5443;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "database {path} is corrupt ({detail}); it was left untouched: restore it from a backup or move it \
         away to start empty"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("database {path} is not a Portico database (application_id {found:#x})")]
    Foreign { path: PathBuf, found: i64 },
    #[error(
        "database {path} was written by a newer Portico (schema {found}, this version knows up to {known}); \
         upgrade Portico or restore a backup made by this version"
    )]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Data(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The SQLite database of one appliance.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database, checks that it is intact and ours, and migrates it forward.
    /// Never deletes or resets an existing file.
    pub async fn open(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
        let base = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(SqliteSynchronous::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.clone().create_if_missing(true).journal_mode(SqliteJournalMode::Wal))
            .await
            .map_err(|e| classify_open_error(path, e))?;

        let check: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&writer)
            .await
            .map_err(|e| classify_open_error(path, e))?;
        if check.first().map(String::as_str) != Some("ok") {
            return Err(corrupt(check.join("; ")));
        }

        let app_id: i64 = sqlx::query_scalar("PRAGMA application_id").fetch_one(&writer).await.map_err(open_err)?;
        let table_count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetch_one(&writer).await?;
        if app_id != APPLICATION_ID {
            if table_count > 0 {
                return Err(StoreError::Foreign { path: path.to_path_buf(), found: app_id });
            }
            sqlx::query("PRAGMA application_id = 1347572803").execute(&writer).await?;
        }

        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let has_migrations: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '_sqlx_migrations'")
                .fetch_one(&writer)
                .await?;
        if has_migrations > 0 {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations").fetch_one(&writer).await?;
            if let Some(found) = found
                && found > known
            {
                return Err(StoreError::NewerSchema { path: path.to_path_buf(), found, known });
            }
        }
        MIGRATOR.run(&writer).await?;

        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| classify_open_error(path, e))?;
        tracing::info!(path = %path.display(), schema = known, "store opened");
        Ok(Store { writer, reader, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checkpoints the WAL and closes every connection.
    pub async fn close(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
            tracing::warn!(error = %e, "WAL checkpoint at close failed");
        }
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&self.reader).await.is_ok()
    }

    /// Size of the database file and its WAL, in bytes.
    pub fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [self.path.as_path(), wal.as_path()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }
}

fn classify_open_error(path: &Path, e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().unwrap_or_default();
        // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), with or without extended codes.
        let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
        if primary == 11 || primary == 26 {
            return StoreError::Corrupt { path: path.to_path_buf(), detail: db.message().to_string() };
        }
    }
    StoreError::Open { path: path.to_path_buf(), source: e }
}

pub(crate) fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_garbage_and_foreign_and_newer_databases() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
        let err = Store::open(&garbage).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 8192], "file must be left untouched");

        let newer = dir.path().join("newer.db");
        let store = Store::open(&newer).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
             VALUES (9999, 'future', CURRENT_TIMESTAMP, 1, x'00', 0)",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        store.close().await;
        let err = Store::open(&newer).await.unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { found: 9999, .. }), "{err}");

        let foreign = dir.path().join("foreign.db");
        let pool = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::new().filename(&foreign).create_if_missing(true))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x)").execute(&pool).await.unwrap();
        pool.close().await;
        assert!(matches!(Store::open(&foreign).await.unwrap_err(), StoreError::Foreign { .. }));
    }

    #[tokio::test]
    async fn reopens_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        Store::open(&path).await.unwrap().close().await;
        let s = Store::open(&path).await.unwrap();
        assert!(s.ping().await);
    }
}
