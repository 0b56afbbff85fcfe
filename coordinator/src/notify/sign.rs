//! The webhook signature: `stylefarm-signature: t=SECONDS,v1=HEX`, where HEX
//! is HMAC-SHA256 under the target's key of `SECONDS.BODY` (the Unix time of
//! the try, a dot, the raw body). A receiver recomputes it, compares in
//! constant time, and refuses a `t` too far from its clock (replays).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secrets::SigningKey;

/// The header the signature travels in.
pub const HEADER: &str = "stylefarm-signature";

fn mac(key: &SigningKey, seconds: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header's value for `body` sent at `seconds` (Unix time).
pub fn signature(key: &SigningKey, seconds: i64, body: &[u8]) -> String {
    format!("t={seconds},v1={}", hex::encode(mac(key, seconds, body).finalize().into_bytes()))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the header is not `t=SECONDS,v1=HEX`")]
    Malformed,
    #[error("signed at {signed}, {skew} s from now (the tolerance is {tolerance} s)")]
    Stale { signed: i64, skew: i64, tolerance: i64 },
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a header as a receiver would (the coordinator never needs to; its
/// tests and docs do): well formed, within `tolerance_s` of `now_s`, and the
/// HMAC of the body under `key`.
pub fn verify(key: &SigningKey, header: &str, body: &[u8], now_s: i64, tolerance_s: i64) -> Result<(), Refused> {
    let mut seconds = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => seconds = t.parse::<i64>().ok(),
            Some(("v1", h)) => v1 = hex::decode(h).ok(),
            _ => {}
        }
    }
    let (Some(signed), Some(v1)) = (seconds, v1) else { return Err(Refused::Malformed) };
    let skew = (now_s - signed).abs();
    if skew > tolerance_s {
        return Err(Refused::Stale { signed, skew, tolerance: tolerance_s });
    }
    mac(key, signed, body).verify_slice(&v1).map_err(|_| Refused::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::new(b"0123456789abcdef0123".to_vec()).unwrap()
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let body = br#"{"event":"batch.finished"}"#;
        let header = signature(&key(), 1_800_000_000, body);
        assert!(header.starts_with("t=1800000000,v1="), "{header}");
        assert_eq!(verify(&key(), &header, body, 1_800_000_010, 300), Ok(()));
        assert_eq!(verify(&key(), &header, br#"{"event":"batch.finishes"}"#, 1_800_000_010, 300), Err(Refused::Mismatch));
        let other = SigningKey::new(b"another key of 16+ bytes".to_vec()).unwrap();
        assert_eq!(verify(&other, &header, body, 1_800_000_010, 300), Err(Refused::Mismatch));
        // the time is signed too: moving it breaks the signature
        let moved = header.replace("t=1800000000", "t=1800000005");
        assert_eq!(verify(&key(), &moved, body, 1_800_000_010, 300), Err(Refused::Mismatch));
        assert!(matches!(verify(&key(), &header, body, 1_800_000_400, 300), Err(Refused::Stale { skew: 400, .. })));
        assert_eq!(verify(&key(), "v1=00", body, 1_800_000_000, 300), Err(Refused::Malformed));
    }

    #[test]
    fn the_mac_is_hmac_sha256_of_time_dot_body() {
        // worked out independently: python3 -c 'import hmac, hashlib;
        // print(hmac.new(b"0123456789abcdef0123", b"1800000000." + b"{\"event\":\"batch.finished\"}", hashlib.sha256).hexdigest())'
        let header = signature(&key(), 1_800_000_000, br#"{"event":"batch.finished"}"#);
        assert_eq!(header, "t=1800000000,v1=d6dfec71a9cb13fe6e062f25ebfc9d52e4f797ef66618e1f33c0a3789347d00a");
    }
}
