//! Secrets as types: a [`Secret`] is handed out once (a lease secret, a
//! worker's registration secret, an API token's secret part) and never logged;
//! only its [`SecretHash`] is kept, and a presented secret is checked against
//! it in constant time.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Lower-case hex (a lease makes two of these; `hex::encode` goes through a
/// char iterator and costs several times more).
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// 128 random bits, as 32 hex digits on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn generate() -> Secret {
        Secret(to_hex(&rand::random::<[u8; 16]>()))
    }

    /// The secret's text, to hand to its holder (never to a log).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// An API token's text, `sf1_<id>_<secret>`: a 64-bit public id (16 hex
/// digits) that names it and a 256-bit secret (64 hex digits) kept only as
/// its [`SecretHash`]. The one place the format is made and read.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    id: String,
    secret: String,
}

impl ApiToken {
    pub fn generate() -> ApiToken {
        ApiToken { id: to_hex(&rand::random::<[u8; 8]>()), secret: to_hex(&rand::random::<[u8; 32]>()) }
    }

    /// Splits `sf1_<id>_<secret>` (surrounding whitespace ignored); None if
    /// the text is not of that shape.
    pub fn parse(text: &str) -> Option<ApiToken> {
        let (id, secret) = ApiToken::split(text)?;
        Some(ApiToken { id: id.to_string(), secret: secret.to_string() })
    }

    /// The id and secret of `sf1_<id>_<secret>`, borrowed (every call is
    /// checked this way: no copies on that path).
    pub fn split(text: &str) -> Option<(&str, &str)> {
        text.trim().strip_prefix("sf1_")?.split_once('_')
    }

    /// Whether it is as [`ApiToken::generate`] makes them: 16 and 64 hex digits.
    pub fn is_canonical(&self) -> bool {
        let hex_of = |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
        hex_of(&self.id, 16) && hex_of(&self.secret, 64)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part, to check against its hash (never to a log).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The token's text, to hand to its holder (never to a log).
    pub fn expose(&self) -> String {
        format!("sf1_{}_{}", self.id, self.secret)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({}, …)", self.id)
    }
}

/// A webhook target's signing key, read from a file the operator made (its
/// bytes, less surrounding whitespace): it signs, and is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Shortest key taken (128 bits of hex or base64 text is longer).
    pub const MIN_BYTES: usize = 16;

    pub fn new(bytes: Vec<u8>) -> Result<SigningKey, String> {
        if bytes.len() < Self::MIN_BYTES {
            return Err(format!("{} bytes; a signing key needs at least {}", bytes.len(), Self::MIN_BYTES));
        }
        Ok(SigningKey(bytes))
    }

    pub fn from_file(path: &std::path::Path) -> Result<SigningKey, String> {
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let trimmed = text.trim_ascii();
        SigningKey::new(trimmed.to_vec()).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

/// SHA-256 of a secret (the secrets are random, so no slow hash is needed).
/// The zero hash (`SecretHash::default()`) matches nothing.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> SecretHash {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant-time check of a presented secret.
    pub fn verify(&self, presented: &str) -> bool {
        if self.0 == [0; 32] {
            return false;
        }
        let other = SecretHash::of(presented);
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits; anything else is the zero hash (matches nothing).
    pub fn from_hex(text: &str) -> SecretHash {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(text, &mut out) {
            Ok(()) => SecretHash(out),
            Err(_) => SecretHash::default(),
        }
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}…)", &self.to_hex()[..8])
    }
}

impl Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretHash, D::Error> {
        let text = String::deserialize(d)?;
        Ok(SecretHash::from_hex(&text))
    }
}

/// What a worker presents about a job it holds: the fencing token (the attempt
/// number, which only grows) and the lease's secret.
#[derive(Debug, Clone)]
pub struct LeaseClaim {
    pub attempt: u32,
    pub secret: String,
}

impl LeaseClaim {
    pub fn new(attempt: u32, secret: impl Into<String>) -> LeaseClaim {
        LeaseClaim { attempt, secret: secret.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_verify_only_themselves_and_never_print() {
        let s = Secret::generate();
        assert_eq!(s.expose().len(), 32);
        let h = s.hash();
        assert!(h.verify(s.expose()));
        assert!(!h.verify(&Secret::generate().0));
        assert!(!h.verify(""));
        assert!(!SecretHash::default().verify(""), "the zero hash matches nothing");
        assert_eq!(SecretHash::from_hex(&h.to_hex()), h);
        assert_eq!(to_hex(&[0x00, 0x9f, 0xa0, 0xff]), hex::encode([0x00, 0x9f, 0xa0, 0xff]));
        assert_eq!(SecretHash::from_hex("zz"), SecretHash::default());
        assert!(!format!("{s:?} {h:?}").contains(s.expose()));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<SecretHash>(&json).unwrap(), h);
    }
}
