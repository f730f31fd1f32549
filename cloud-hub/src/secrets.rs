//! Secrets the hub issues (API and enrollment tokens, broker passwords) and how it checks them:
//! only salted hashes are stored, and comparisons are constant-time (`subtle`).

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Salted SHA-256 of a secret. The secrets are 32 random bytes issued by the hub, so a fast
/// hash is enough (no dictionary to attack).
pub fn hash_secret(salt: &str, secret: &str) -> String {
    hex::encode(Sha256::digest(format!("{salt}:{secret}").as_bytes()))
}

/// Compares without an early exit on the contents.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// 32 random bytes as hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
        assert_ne!(hash_secret("s", "p"), hash_secret("t", "p"));
        assert_ne!(random_token(), random_token());
    }
}
