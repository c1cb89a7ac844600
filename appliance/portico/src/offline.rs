//! Commands that work on a data dir while the appliance is stopped.

use crate::{open_data_dir, open_sealer, open_store};
use anyhow::{Context, Result, bail};
use control::portability::{Export, FORMAT};
use control::{ChangeMeta, Control, Pipeline};
use std::io::Write;
use std::path::Path;
use store::Source;

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

async fn control(data_dir: &Path) -> Result<(std::fs::File, Control)> {
    let lock = open_data_dir(data_dir)?;
    let store = open_store(data_dir).await?;
    let control = Control::start(store, Pipeline::new(), open_sealer(data_dir)?)
        .await
        .context("cannot load the configuration")?;
    Ok((lock, control))
}

pub async fn export(data_dir: &Path, file: Option<&Path>, include_secrets: bool) -> Result<()> {
    let (_lock, control) = control(data_dir).await?;
    let mut export = control.export();
    if !include_secrets {
        export.config = export.config.redacted();
    }
    let text = match file {
        Some(f) if is_yaml(f) => serde_yaml_ng::to_string(&export)?,
        _ => serde_json::to_string_pretty(&export)? + "\n",
    };
    match file {
        Some(f) => {
            std::fs::write(f, text).with_context(|| format!("cannot write {}", f.display()))?;
            eprintln!("exported revision {} to {}", export.revision, f.display());
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    control.store().close().await;
    Ok(())
}

pub async fn import(data_dir: &Path, file: &Path, dry_run: bool) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let export =
        parse_import(&text, is_yaml(file)).with_context(|| format!("{} is not a Portico export", file.display()))?;
    let (_lock, control) = control(data_dir).await?;
    let meta = ChangeMeta {
        author: std::env::var("USER").map(|u| format!("{u} (cli)")).unwrap_or_else(|_| "cli".into()),
        source: Source::Import,
        message: format!("import {}", file.display()),
    };
    let outcome = match control.import(meta, export, dry_run).await {
        Ok(o) => o,
        Err(control::ChangeError::Invalid(errors)) | Err(control::ChangeError::InUse(errors)) => {
            for e in &errors.0 {
                eprintln!("  {}: {}", e.field, e.message);
            }
            bail!("{} has {} problem(s); nothing was imported", file.display(), errors.0.len());
        }
        Err(e) => return Err(e.into()),
    };
    for c in &outcome.changes {
        eprintln!("  {:?} {} '{}'", c.op, c.kind, c.name);
    }
    match (&outcome.revision, dry_run) {
        (_, true) => eprintln!("dry run: {} change(s), nothing written", outcome.changes.len()),
        (Some(r), false) => eprintln!("imported as revision {}", r.number),
        (None, false) => eprintln!("nothing to change"),
    }
    control.store().close().await;
    Ok(())
}

/// An export file, or a bare configuration document (what GET /api/v1/config returns).
fn parse_import(text: &str, yaml: bool) -> Result<Export> {
    let value: serde_json::Value = if yaml { serde_yaml_ng::from_str(text)? } else { serde_json::from_str(text)? };
    if value.get("format").is_some() {
        Ok(serde_json::from_value(value)?)
    } else {
        Ok(Export { format: FORMAT.into(), revision: 0, config: serde_json::from_value(value)?, allocations: vec![] })
    }
}

pub async fn reset_password(data_dir: &Path, user: &str) -> Result<()> {
    let _lock = open_data_dir(data_dir)?;
    let store = open_store(data_dir).await?;
    let Some(u) = store.user_by_name(user).await? else { bail!("no user is named '{user}'") };
    let password = api::random_secret(15);
    let pw = password.clone();
    let hash = tokio::task::spawn_blocking(move || api::hash_password(&pw))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {}", e.problem.detail))?;
    store.set_password(u.id, &hash, true).await?;
    store.close().await;
    println!("{password}");
    eprintln!(
        "new password for '{user}' printed above; it must be changed at the next login; their sessions were ended"
    );
    Ok(())
}
