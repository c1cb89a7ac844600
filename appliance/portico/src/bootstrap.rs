//! First start: create the `admin` user, with `PORTICO_ADMIN_PASSWORD` or a generated password written to
//! `DATA/initial-admin-password` (mode 0600) that must be changed at first login.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use store::{Role, Store};

pub const PASSWORD_FILE: &str = "initial-admin-password";

pub async fn ensure_admin(store: &Store, data_dir: &Path) -> Result<()> {
    let file = data_dir.join(PASSWORD_FILE);
    if store.count_users().await? > 0 {
        // The generated password is useless once changed; don't leave it lying around.
        if file.exists()
            && let Some(admin) = store.user_by_name("admin").await?
            && !admin.must_change_password
        {
            std::fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
            tracing::info!(file = %file.display(), "removed the initial admin password file (password was changed)");
        }
        return Ok(());
    }
    let (password, generated) = match std::env::var("PORTICO_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => {
            if let Some(problem) = api::password_problem("admin", &p) {
                bail!("PORTICO_ADMIN_PASSWORD {problem}");
            }
            (p, false)
        }
        _ => (api::random_secret(15), true),
    };
    let hash = tokio::task::spawn_blocking(move || api::hash_password(&password).map(|h| (h, password)))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot hash the admin password: {}", e.problem.detail))?;
    let (hash, password) = hash;
    if generated {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        writeln!(f, "{password}")?;
        f.sync_all()?;
    }
    store.create_user("admin", &hash, Role::Admin, generated).await?;
    if generated {
        tracing::warn!(user = "admin", password_file = %file.display(), "created the first admin user with a generated password; it must be changed at first login");
    } else {
        tracing::info!(user = "admin", "created the first admin user with the password from PORTICO_ADMIN_PASSWORD");
    }
    Ok(())
}
