//! Sealing: undo records and saved executeData that hold secrets are encrypted
//! (ChaCha20-Poly1305) with a key from the configuration before they reach the journal.
//! Without a key they are not kept (the record says so), never written in clear text.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::path::Path;

/// A sealing key. `Debug` never shows it.
#[derive(Clone)]
pub struct SealKey(Key);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(********)")
    }
}

/// Sealing failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key file or value is unusable.
    #[error("seal key: {0}")]
    Key(String),
    /// Sealed data does not open with this key (wrong key or tampered record).
    #[error("sealed journal data cannot be opened: wrong key or damaged record")]
    Open,
}

impl SealKey {
    /// A key from 64 hex characters or standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<SealKey, SealError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| {
                    u8::from_str_radix(&text[i * 2..i * 2 + 2], 16)
                        .map_err(|e| SealError::Key(e.to_string()))
                })
                .collect::<Result<Vec<u8>, _>>()?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| SealError::Key("not 64 hex digits nor base64".into()))?
        };
        if bytes.len() != 32 {
            return Err(SealError::Key(format!(
                "a seal key is 32 bytes, this one is {}",
                bytes.len()
            )));
        }
        Ok(SealKey(*Key::from_slice(&bytes)))
    }

    /// Reads the key file, creating it (mode 0600, random key) when absent.
    pub fn load_or_create(path: &Path) -> Result<SealKey, SealError> {
        match std::fs::read_to_string(path) {
            Ok(text) => SealKey::parse(&text)
                .map_err(|e| SealError::Key(format!("`{}`: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| SealError::Key(e.to_string()))?;
                }
                write_private(path, &hex).map_err(|e| {
                    SealError::Key(format!("cannot write `{}`: {e}", path.display()))
                })?;
                Ok(SealKey(key))
            }
            Err(e) => Err(SealError::Key(format!(
                "cannot read `{}`: {e}",
                path.display()
            ))),
        }
    }

    /// Encrypts bytes: base64 of nonce ‖ ciphertext.
    pub fn seal(&self, plain: &[u8]) -> String {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a fresh nonce cannot fail for in-memory buffers.
        let ct = cipher.encrypt(&nonce, plain).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts what [`SealKey::seal`] produced.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SealError::Open)?;
        if raw.len() < 12 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(12);
        ChaCha20Poly1305::new(&self.0)
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_hides_the_plain_text() {
        let key = SealKey::parse(&"ab".repeat(32)).unwrap();
        let sealed = key.seal(b"hunter2-password");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(&sealed).unwrap(), b"hunter2-password");
        let other = SealKey::parse(&"cd".repeat(32)).unwrap();
        assert_eq!(other.open(&sealed), Err(SealError::Open));
        assert!(format!("{key:?}").contains("****"));
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(SealKey::parse("short")
            .unwrap_err()
            .to_string()
            .contains("seal key"));
    }
}
