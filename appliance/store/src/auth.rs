//! Users, login sessions, API tokens and the audit log.

use crate::{Result, Store, StoreError, from_ms, now_ms, to_ms};
use sqlx::Row;
use time::OffsetDateTime;

/// What a user or token may do: `admin` everything, `operator` change configuration, `viewer` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

fn role_of(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| StoreError::Data(format!("unknown role '{s}'")))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub must_change_password: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: i64,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub secret_hash: String,
    pub user_id: i64,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub actor: String,
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub outcome: String,
    pub request_id: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: i64,
    pub at: OffsetDateTime,
    pub entry: NewAuditEntry,
}

fn user_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<User> {
    Ok(User {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        role: role_of(row.try_get(3)?)?,
        must_change_password: row.try_get::<i64, _>(4)? != 0,
        created_at: from_ms(row.try_get(5)?),
        updated_at: from_ms(row.try_get(6)?),
    })
}

fn token_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Token> {
    Ok(Token {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        role: role_of(row.try_get(2)?)?,
        secret_hash: row.try_get(3)?,
        user_id: row.try_get(4)?,
        created_at: from_ms(row.try_get(5)?),
        expires_at: row.try_get::<Option<i64>, _>(6)?.map(from_ms),
        last_used_at: row.try_get::<Option<i64>, _>(7)?.map(from_ms),
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    pub async fn count_users(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&self.writer).await?)
    }

    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        must_change: bool,
    ) -> Result<User> {
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO users (username, password_hash, role, must_change_password, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(i64::from(must_change))
        .bind(now)
        .bind(now)
        .execute(&self.writer)
        .await;
        match result {
            Ok(r) => self.user_by_id(r.last_insert_rowid()).await?.ok_or_else(|| StoreError::NotFound("user".into())),
            Err(e) if unique_violation(&e) => Err(StoreError::Conflict(format!("user '{username}' already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, role, must_change_password, created_at, updated_at FROM users WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, role, must_change_password, created_at, updated_at \
             FROM users WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT id, username, password_hash, role, must_change_password, created_at, updated_at \
             FROM users ORDER BY username",
        )
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Sets a new password hash; ends every session and revokes nothing else.
    pub async fn set_password(&self, user_id: i64, password_hash: &str, must_change: bool) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let r =
            sqlx::query("UPDATE users SET password_hash = ?, must_change_password = ?, updated_at = ? WHERE id = ?")
                .bind(password_hash)
                .bind(i64::from(must_change))
                .bind(now_ms())
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("user".into()));
        }
        sqlx::query("DELETE FROM sessions WHERE user_id = ?").bind(user_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes a user's role; tokens the user made are capped at the new role.
    pub async fn set_role(&self, user_id: i64, role: Role) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let r = sqlx::query("UPDATE users SET role = ?, updated_at = ? WHERE id = ?")
            .bind(role.as_str())
            .bind(now_ms())
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("user".into()));
        }
        let lower: Vec<&str> =
            [Role::Admin, Role::Operator, Role::Viewer].into_iter().filter(|r| *r > role).map(Role::as_str).collect();
        for above in lower {
            sqlx::query("UPDATE tokens SET role = ? WHERE user_id = ? AND role = ?")
                .bind(role.as_str())
                .bind(user_id)
                .bind(above)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_user(&self, user_id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM users WHERE id = ?").bind(user_id).execute(&self.writer).await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn create_session(
        &self,
        id_hash: &str,
        user_id: i64,
        expires_at: OffsetDateTime,
        client: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO sessions (id_hash, user_id, created_at, expires_at, client) VALUES (?, ?, ?, ?, ?)")
            .bind(id_hash)
            .bind(user_id)
            .bind(now_ms())
            .bind(to_ms(expires_at))
            .bind(client)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The live session with this hash and its user; expired sessions are deleted on sight.
    pub async fn session(&self, id_hash: &str) -> Result<Option<(Session, User)>> {
        let row = sqlx::query("SELECT user_id, created_at, expires_at FROM sessions WHERE id_hash = ?")
            .bind(id_hash)
            .fetch_optional(&self.writer)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let session = Session {
            user_id: row.try_get(0)?,
            created_at: from_ms(row.try_get(1)?),
            expires_at: from_ms(row.try_get(2)?),
        };
        if session.expires_at <= OffsetDateTime::now_utc() {
            self.delete_session(id_hash).await?;
            return Ok(None);
        }
        Ok(self.user_by_id(session.user_id).await?.map(|u| (session, u)))
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = ?").bind(id_hash).execute(&self.writer).await?;
        Ok(())
    }

    /// Ends every session of a user (revocation).
    pub async fn delete_sessions_of(&self, user_id: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE user_id = ?").bind(user_id).execute(&self.writer).await?;
        Ok(r.rows_affected())
    }

    pub async fn purge_expired_sessions(&self) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?").bind(now_ms()).execute(&self.writer).await?;
        Ok(r.rows_affected())
    }

    pub async fn create_token(&self, token: &Token) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO tokens (id, name, role, secret_hash, user_id, created_at, expires_at, last_used_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(token.role.as_str())
        .bind(&token.secret_hash)
        .bind(token.user_id)
        .bind(to_ms(token.created_at))
        .bind(token.expires_at.map(to_ms))
        .execute(&self.writer)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(StoreError::Conflict("token id collision; try again".into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn token(&self, id: &str) -> Result<Option<Token>> {
        let row = sqlx::query(
            "SELECT id, name, role, secret_hash, user_id, created_at, expires_at, last_used_at FROM tokens WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Tokens of one user, or of everyone when `user_id` is `None`.
    pub async fn list_tokens(&self, user_id: Option<i64>) -> Result<Vec<Token>> {
        let rows = sqlx::query(
            "SELECT id, name, role, secret_hash, user_id, created_at, expires_at, last_used_at FROM tokens \
             WHERE ? IS NULL OR user_id = ? ORDER BY created_at, id",
        )
        .bind(user_id)
        .bind(user_id)
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn delete_token(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM tokens WHERE id = ?").bind(id).execute(&self.writer).await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn touch_token(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn append_audit(&self, e: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at, actor, client, method, path, status, outcome, request_id, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(now_ms())
        .bind(&e.actor)
        .bind(&e.client)
        .bind(&e.method)
        .bind(&e.path)
        .bind(i64::from(e.status))
        .bind(&e.outcome)
        .bind(&e.request_id)
        .bind(&e.detail)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Audit entries newest first, those with id below `before` when given.
    pub async fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, client, method, path, status, outcome, request_id, detail FROM audit \
             WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at: from_ms(r.try_get(1)?),
                    entry: NewAuditEntry {
                        actor: r.try_get(2)?,
                        client: r.try_get(3)?,
                        method: r.try_get(4)?,
                        path: r.try_get(5)?,
                        status: u16::try_from(r.try_get::<i64, _>(6)?).unwrap_or(0),
                        outcome: r.try_get(7)?,
                        request_id: r.try_get(8)?,
                        detail: r.try_get(9)?,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_sessions_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).await.unwrap();
        let u = store.create_user("alice", "h", Role::Admin, true).await.unwrap();
        assert!(matches!(store.create_user("alice", "h", Role::Viewer, false).await, Err(StoreError::Conflict(_))));
        let far = OffsetDateTime::now_utc() + time::Duration::hours(1);
        store.create_session("s1", u.id, far, "127.0.0.1").await.unwrap();
        store.create_session("old", u.id, OffsetDateTime::now_utc() - time::Duration::seconds(1), "x").await.unwrap();
        assert_eq!(store.session("s1").await.unwrap().unwrap().1.username, "alice");
        assert!(store.session("old").await.unwrap().is_none());
        let t = Token {
            id: "t1".into(),
            name: "ci".into(),
            role: Role::Admin,
            secret_hash: "x".into(),
            user_id: u.id,
            created_at: OffsetDateTime::now_utc(),
            expires_at: None,
            last_used_at: None,
        };
        store.create_token(&t).await.unwrap();
        store.set_role(u.id, Role::Operator).await.unwrap();
        assert_eq!(store.token("t1").await.unwrap().unwrap().role, Role::Operator);
        store.set_password(u.id, "h2", false).await.unwrap();
        assert!(store.session("s1").await.unwrap().is_none(), "password change ends sessions");
        assert!(store.delete_user(u.id).await.unwrap());
        assert!(store.token("t1").await.unwrap().is_none(), "tokens go with their user");
    }
}
