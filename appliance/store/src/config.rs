//! Configuration revisions, object versions, allocations and pending commit-confirms.

use crate::{Result, Store, StoreError, from_ms, now_ms, to_ms};
use model::config::{Kind, ObjectMap};
use model::ipam::Allocation;
use serde_json::Value;
use sqlx::Row;
use time::OffsetDateTime;

/// Who or what made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    Ui,
    Cli,
    Import,
    System,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Ui => "ui",
            Source::Cli => "cli",
            Source::Import => "import",
            Source::System => "system",
        }
    }

    fn parse(s: &str) -> Result<Source> {
        Ok(match s {
            "api" => Source::Api,
            "ui" => Source::Ui,
            "cli" => Source::Cli,
            "import" => Source::Import,
            "system" => Source::System,
            other => return Err(StoreError::Data(format!("unknown revision source '{other}'"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    pub number: u64,
    pub created_at: OffsetDateTime,
    pub author: String,
    pub source: Source,
    pub message: String,
    pub rollback_of: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct NewRevision {
    pub author: String,
    pub source: Source,
    pub message: String,
    pub rollback_of: Option<u64>,
}

/// One object as stored: its current body and the revision that last wrote it (its version, for ETags).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub kind: Kind,
    pub name: String,
    pub since: u64,
    pub body: Value,
}

/// A change to one object: a new body, or `None` to delete it.
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: Kind,
    pub name: String,
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Default)]
pub struct AllocationDelta {
    pub released: Vec<Allocation>,
    pub added: Vec<Allocation>,
}

impl AllocationDelta {
    /// The changes that turn `old` into `new`.
    pub fn between(old: &[Allocation], new: &[Allocation]) -> AllocationDelta {
        let old_set: std::collections::HashSet<&Allocation> = old.iter().collect();
        let new_set: std::collections::HashSet<&Allocation> = new.iter().collect();
        AllocationDelta {
            released: old.iter().filter(|a| !new_set.contains(a)).cloned().collect(),
            added: new.iter().filter(|a| !old_set.contains(a)).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.released.is_empty() && self.added.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingConfirm {
    pub revision: u64,
    pub revert_to: u64,
    pub deadline: OffsetDateTime,
    pub author: String,
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn revision_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<RevisionInfo> {
    Ok(RevisionInfo {
        number: u64_of(row.try_get(0)?),
        created_at: from_ms(row.try_get(1)?),
        author: row.try_get(2)?,
        source: Source::parse(row.try_get::<&str, _>(3)?)?,
        message: row.try_get(4)?,
        rollback_of: row.try_get::<Option<i64>, _>(5)?.map(u64_of),
    })
}

fn object_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredObject> {
    let kind_text: &str = row.try_get(0)?;
    let kind = Kind::parse(kind_text).ok_or_else(|| StoreError::Data(format!("unknown object kind '{kind_text}'")))?;
    let body_text: &str = row.try_get(3)?;
    let body = serde_json::from_str(body_text).map_err(|e| StoreError::Data(format!("{kind_text} body: {e}")))?;
    Ok(StoredObject { kind, name: row.try_get(1)?, since: u64_of(row.try_get(2)?), body })
}

impl Store {
    /// The newest revision, if any.
    pub async fn head(&self) -> Result<Option<RevisionInfo>> {
        let row = sqlx::query(
            "SELECT number, created_at, author, source, message, rollback_of FROM revisions ORDER BY number DESC LIMIT 1",
        )
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    pub async fn revision(&self, number: u64) -> Result<Option<RevisionInfo>> {
        let row = sqlx::query(
            "SELECT number, created_at, author, source, message, rollback_of FROM revisions WHERE number = ?",
        )
        .bind(i64_of(number))
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    /// Revisions newest first, those below `before` when given.
    pub async fn revisions(&self, before: Option<u64>, limit: u32) -> Result<Vec<RevisionInfo>> {
        let rows = sqlx::query(
            "SELECT number, created_at, author, source, message, rollback_of FROM revisions \
             WHERE number < ? ORDER BY number DESC LIMIT ?",
        )
        .bind(before.map(i64_of).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(revision_from_row).collect()
    }

    /// The current objects (read through the writer so they are never behind the latest commit).
    pub async fn current_objects(&self) -> Result<Vec<StoredObject>> {
        let rows = sqlx::query(
            "SELECT kind, name, since_rev, body FROM config_objects WHERE until_rev IS NULL ORDER BY kind, name",
        )
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(object_from_row).collect()
    }

    /// The whole configuration as it was right after revision `number`.
    pub async fn objects_at(&self, number: u64) -> Result<ObjectMap> {
        let n = i64_of(number);
        let rows = sqlx::query(
            "SELECT kind, name, since_rev, body FROM config_objects \
             WHERE since_rev <= ? AND (until_rev IS NULL OR until_rev > ?)",
        )
        .bind(n)
        .bind(n)
        .fetch_all(&self.reader)
        .await?;
        let mut map = ObjectMap::new();
        for row in &rows {
            let o = object_from_row(row)?;
            map.insert((o.kind, o.name), o.body);
        }
        Ok(map)
    }

    /// The objects revision `number` changed: (before, after), each holding only those objects.
    pub async fn revision_changes(&self, number: u64) -> Result<(ObjectMap, ObjectMap)> {
        let n = i64_of(number);
        let rows = sqlx::query(
            "SELECT kind, name, since_rev, body, until_rev FROM config_objects WHERE until_rev = ? OR since_rev = ?",
        )
        .bind(n)
        .bind(n)
        .fetch_all(&self.reader)
        .await?;
        let (mut before, mut after) = (ObjectMap::new(), ObjectMap::new());
        for row in &rows {
            let o = object_from_row(row)?;
            let until: Option<i64> = row.try_get(4)?;
            // A row written and replaced in the same revision cannot happen: one write per object per revision.
            if until == Some(n) {
                before.insert((o.kind, o.name), o.body);
            } else {
                after.insert((o.kind, o.name), o.body);
            }
        }
        Ok((before, after))
    }

    /// Writes one revision atomically: the revision row, every object change and the allocation changes.
    /// `expected_head` guards against a concurrent writer having moved on.
    pub async fn commit(
        &self,
        expected_head: u64,
        revision: &NewRevision,
        writes: &[Write],
        allocations: &AllocationDelta,
    ) -> Result<RevisionInfo> {
        let mut tx = self.writer.begin().await?;
        let head: Option<i64> = sqlx::query_scalar("SELECT max(number) FROM revisions").fetch_one(&mut *tx).await?;
        if u64_of(head.unwrap_or(0)) != expected_head {
            return Err(StoreError::Conflict(format!(
                "configuration moved to revision {} while this change was prepared against {expected_head}",
                head.unwrap_or(0)
            )));
        }
        let number = expected_head + 1;
        let n = i64_of(number);
        let created = now_ms();
        sqlx::query(
            "INSERT INTO revisions (number, created_at, author, source, message, rollback_of) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(n)
        .bind(created)
        .bind(&revision.author)
        .bind(revision.source.as_str())
        .bind(&revision.message)
        .bind(revision.rollback_of.map(i64_of))
        .execute(&mut *tx)
        .await?;
        for w in writes {
            sqlx::query("UPDATE config_objects SET until_rev = ? WHERE kind = ? AND name = ? AND until_rev IS NULL")
                .bind(n)
                .bind(w.kind.as_str())
                .bind(&w.name)
                .execute(&mut *tx)
                .await?;
            if let Some(body) = &w.body {
                let text = serde_json::to_string(body).map_err(|e| StoreError::Data(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO config_objects (kind, name, since_rev, until_rev, body) VALUES (?, ?, ?, NULL, ?)",
                )
                .bind(w.kind.as_str())
                .bind(&w.name)
                .bind(n)
                .bind(text)
                .execute(&mut *tx)
                .await?;
            }
        }
        apply_allocations(&mut tx, allocations).await?;
        tx.commit().await?;
        Ok(RevisionInfo {
            number,
            created_at: from_ms(created),
            author: revision.author.clone(),
            source: revision.source,
            message: revision.message.clone(),
            rollback_of: revision.rollback_of,
        })
    }

    pub async fn allocations(&self) -> Result<Vec<Allocation>> {
        let rows = sqlx::query("SELECT address, pool, owner FROM allocations").fetch_all(&self.writer).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: &str = row.try_get(0)?;
            let address = text.parse().map_err(|_| StoreError::Data(format!("allocation address '{text}'")))?;
            out.push(Allocation { address, pool: row.try_get(1)?, owner: row.try_get(2)? });
        }
        out.sort();
        Ok(out)
    }

    /// Changes allocations without a revision: observed state (cluster Services coming and going) moves VIPs,
    /// but is never part of the configuration history.
    pub async fn update_allocations(&self, delta: &AllocationDelta) -> Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        apply_allocations(&mut tx, delta).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Saves a cluster's last known state (JSON), replacing the previous one.
    pub async fn save_observed(&self, cluster: &str, body: &str) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO observed_cache (cluster, body, saved_at) VALUES (?, ?, ?)")
            .bind(cluster)
            .bind(body)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Forgets the last known state of every cluster not in `keep`.
    pub async fn prune_observed(&self, keep: &[String]) -> Result<()> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT cluster FROM observed_cache").fetch_all(&self.writer).await?;
        for cluster in rows.into_iter().filter(|c| !keep.contains(c)) {
            sqlx::query("DELETE FROM observed_cache WHERE cluster = ?").bind(&cluster).execute(&self.writer).await?;
        }
        Ok(())
    }

    /// Every saved cluster state: (cluster, JSON).
    pub async fn observed_cache(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT cluster, body FROM observed_cache").fetch_all(&self.writer).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The address each owner without a current allocation held last.
    pub async fn released_allocations(&self) -> Result<Vec<Allocation>> {
        let rows = sqlx::query("SELECT address, pool, owner FROM released_allocations").fetch_all(&self.writer).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: &str = row.try_get(0)?;
            let address = text.parse().map_err(|_| StoreError::Data(format!("released address '{text}'")))?;
            out.push(Allocation { address, pool: row.try_get(1)?, owner: row.try_get(2)? });
        }
        Ok(out)
    }

    pub async fn pending_confirm(&self) -> Result<Option<PendingConfirm>> {
        let row = sqlx::query("SELECT revision, revert_to, deadline, author FROM pending_confirm WHERE id = 1")
            .fetch_optional(&self.writer)
            .await?;
        row.map(|r| {
            Ok(PendingConfirm {
                revision: u64_of(r.try_get(0)?),
                revert_to: u64_of(r.try_get(1)?),
                deadline: from_ms(r.try_get(2)?),
                author: r.try_get(3)?,
            })
        })
        .transpose()
    }

    pub async fn set_pending_confirm(&self, pending: Option<&PendingConfirm>) -> Result<()> {
        match pending {
            None => {
                sqlx::query("DELETE FROM pending_confirm").execute(&self.writer).await?;
            }
            Some(p) => {
                sqlx::query(
                    "INSERT OR REPLACE INTO pending_confirm (id, revision, revert_to, deadline, author) \
                     VALUES (1, ?, ?, ?, ?)",
                )
                .bind(i64_of(p.revision))
                .bind(i64_of(p.revert_to))
                .bind(to_ms(p.deadline))
                .bind(&p.author)
                .execute(&self.writer)
                .await?;
            }
        }
        Ok(())
    }
}

async fn apply_allocations(tx: &mut sqlx::SqliteConnection, delta: &AllocationDelta) -> Result<()> {
    let now = now_ms();
    for a in &delta.released {
        sqlx::query(
            "INSERT OR REPLACE INTO released_allocations (owner, address, pool, released_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&a.owner)
        .bind(a.address.to_string())
        .bind(&a.pool)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM allocations WHERE address = ? AND owner = ?")
            .bind(a.address.to_string())
            .bind(&a.owner)
            .execute(&mut *tx)
            .await?;
    }
    for a in &delta.added {
        sqlx::query("DELETE FROM released_allocations WHERE owner = ?").bind(&a.owner).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO allocations (address, pool, owner, allocated_at) VALUES (?, ?, ?, ?)")
            .bind(a.address.to_string())
            .bind(&a.pool)
            .bind(&a.owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rev(msg: &str) -> NewRevision {
        NewRevision { author: "tester".into(), source: Source::Api, message: msg.into(), rollback_of: None }
    }

    fn put(kind: Kind, name: &str, body: Value) -> Write {
        Write { kind, name: name.into(), body: Some(body) }
    }

    #[tokio::test]
    async fn history_is_a_temporal_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        assert!(store.head().await.unwrap().is_none());
        let alloc = Allocation { address: "10.0.0.1".parse().unwrap(), pool: "p".into(), owner: "service/a".into() };
        let r1 = store
            .commit(
                0,
                &rev("one"),
                &[put(Kind::Pool, "p", json!({"v": 1})), put(Kind::Service, "a", json!({"v": 1}))],
                &AllocationDelta { released: vec![], added: vec![alloc.clone()] },
            )
            .await
            .unwrap();
        assert_eq!(r1.number, 1);
        store
            .commit(1, &rev("two"), &[put(Kind::Pool, "p", json!({"v": 2}))], &AllocationDelta::default())
            .await
            .unwrap();
        store
            .commit(
                2,
                &rev("three"),
                &[Write { kind: Kind::Service, name: "a".into(), body: None }],
                &AllocationDelta { released: vec![alloc.clone()], added: vec![] },
            )
            .await
            .unwrap();
        let err = store.commit(1, &rev("stale"), &[], &AllocationDelta::default()).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));

        let at1 = store.objects_at(1).await.unwrap();
        assert_eq!(at1.len(), 2);
        assert_eq!(at1[&(Kind::Pool, "p".to_string())], json!({"v": 1}));
        let at3 = store.objects_at(3).await.unwrap();
        assert_eq!(at3.len(), 1);
        let current = store.current_objects().await.unwrap();
        assert_eq!(current.len(), 1);
        assert_eq!((current[0].since, &current[0].body), (2, &json!({"v": 2})));
        let (before, after) = store.revision_changes(2).await.unwrap();
        assert_eq!((before.len(), after.len()), (1, 1));
        let (before, after) = store.revision_changes(3).await.unwrap();
        assert_eq!((before.len(), after.len()), (1, 0));
        assert!(store.allocations().await.unwrap().is_empty());
        assert_eq!(store.released_allocations().await.unwrap(), vec![alloc.clone()]);
        store
            .commit(3, &rev("back"), &[], &AllocationDelta { released: vec![], added: vec![alloc.clone()] })
            .await
            .unwrap();
        assert!(store.released_allocations().await.unwrap().is_empty());
        let revs = store.revisions(None, 2).await.unwrap();
        assert_eq!(revs.iter().map(|r| r.number).collect::<Vec<_>>(), [4, 3]);
        let revs = store.revisions(Some(2), 10).await.unwrap();
        assert_eq!(revs.iter().map(|r| r.number).collect::<Vec<_>>(), [1]);
    }
}
