//! Credentials at rest: secret fields of stored objects are sealed with ChaCha20-Poly1305 under a key kept in
//! the data dir (mode 0600), bound to their kind, name and field so a sealed value cannot be moved elsewhere.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use model::config::Kind;
use rand::RngCore;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read or create the secrets key {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error("the secrets key {path} is not 32 bytes; restore the right file")]
    KeyLength { path: String },
    #[error(
        "cannot decrypt {field} of {kind} '{name}': the secrets key does not match this database (restore the \
         data dir's secrets.key, or re-enter the credential)"
    )]
    Open { kind: Kind, name: String, field: String },
    #[error("cannot encrypt {field} of {kind} '{name}'")]
    Seal { kind: Kind, name: String, field: String },
}

/// Seals and opens secret fields.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { cipher: ChaCha20Poly1305::new(&Key::from(key)) }
    }

    /// A key for tests and throwaway stores.
    pub fn ephemeral() -> Sealer {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Sealer::new(key)
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh random key.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let shown = path.display().to_string();
        let io = |source| SealError::KeyFile { path: shown.clone(), source };
        if path.exists() {
            let bytes = std::fs::read(path).map_err(io)?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::KeyLength { path: shown.clone() })?;
            return Ok(Sealer::new(key));
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path).map_err(io)?;
        f.write_all(&key).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Sealer::new(key))
    }

    fn aad(kind: Kind, name: &str, field: &str) -> String {
        format!("{kind}/{name}/{field}")
    }

    /// Seals every plain secret field of an object body.
    pub fn seal(&self, kind: Kind, name: &str, body: &mut Value) -> Result<(), SealError> {
        let Some(map) = body.as_object_mut() else { return Ok(()) };
        for field in kind.secret_fields() {
            let Some(Value::String(plain)) = map.get(*field) else { continue };
            if plain.starts_with(PREFIX) {
                continue;
            }
            let mut nonce = [0u8; NONCE_LEN];
            rand::rng().fill_bytes(&mut nonce);
            let aad = Self::aad(kind, name, field);
            let sealed = self
                .cipher
                .encrypt(&Nonce::from(nonce), Payload { msg: plain.as_bytes(), aad: aad.as_bytes() })
                .map_err(|_| SealError::Seal { kind, name: name.into(), field: (*field).into() })?;
            let mut blob = nonce.to_vec();
            blob.extend_from_slice(&sealed);
            let text = format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(blob));
            map.insert((*field).to_string(), Value::String(text));
        }
        Ok(())
    }

    /// Opens every sealed secret field of an object body.
    pub fn open(&self, kind: Kind, name: &str, body: &mut Value) -> Result<(), SealError> {
        let Some(map) = body.as_object_mut() else { return Ok(()) };
        for field in kind.secret_fields() {
            let Some(Value::String(text)) = map.get(*field) else { continue };
            let Some(b64) = text.strip_prefix(PREFIX) else { continue };
            let err = || SealError::Open { kind, name: name.into(), field: (*field).into() };
            let blob = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| err())?;
            if blob.len() < NONCE_LEN {
                return Err(err());
            }
            let (nonce, sealed) = blob.split_at(NONCE_LEN);
            let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| err())?;
            let aad = Self::aad(kind, name, field);
            let plain = self
                .cipher
                .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
                .map_err(|_| err())?;
            let plain = String::from_utf8(plain).map_err(|_| err())?;
            map.insert((*field).to_string(), Value::String(plain));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seal_and_open_bound_to_place() {
        let sealer = Sealer::ephemeral();
        let mut body = json!({"name": "c", "token": "s3cret", "server": "https://x"});
        sealer.seal(Kind::Cluster, "c", &mut body).unwrap();
        let sealed = body["token"].as_str().unwrap().to_string();
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("s3cret"));
        assert_eq!(body["server"], "https://x");
        let mut moved = body.clone();
        assert!(sealer.open(Kind::Cluster, "other", &mut moved).is_err(), "bound to its name");
        assert!(Sealer::ephemeral().open(Kind::Cluster, "c", &mut body.clone()).is_err(), "another key fails");
        sealer.open(Kind::Cluster, "c", &mut body).unwrap();
        assert_eq!(body["token"], "s3cret");
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = Sealer::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = Sealer::load_or_create(&path).unwrap();
        let mut body = json!({"token": "x"});
        a.seal(Kind::Cluster, "c", &mut body).unwrap();
        b.open(Kind::Cluster, "c", &mut body).unwrap();
        assert_eq!(body["token"], "x");
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(Sealer::load_or_create(&path), Err(SealError::KeyLength { .. })));
    }
}
