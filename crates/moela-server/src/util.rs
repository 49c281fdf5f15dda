//! Small helpers: ids, seeds, time.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random 64-bit value (randomly keyed SipHash of a counter; not for cryptography).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// `prefix` followed by `len` random alphanumerics (e.g. `call_…`, `chatcmpl-…`).
pub fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    let mut bits = random_u64();
    let mut left = 10; // 6 bits per character, 10 characters per u64
    for _ in 0..len {
        if left == 0 {
            bits = random_u64();
            left = 10;
        }
        out.push(ALPHABET[(bits & 63) as usize % ALPHABET.len()] as char);
        bits >>= 6;
        left -= 1;
    }
    out
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `token` equals `secret`, in time that depends only on the length of `token` (what
/// the client sent): every byte of it is compared (against the secret cycled), the lengths too,
/// and the results are combined without branching (`subtle`), so neither where the two differ
/// nor the secret's length shows in the time taken.
pub fn constant_time_eq(secret: &[u8], token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    if secret.is_empty() {
        return token.is_empty(); // keys are never empty (ApiKeys refuses them)
    }
    let mut diff = 0u8;
    for (i, &t) in token.iter().enumerate() {
        diff |= t ^ secret[i % secret.len()];
    }
    let same_len = (token.len() as u64).ct_eq(&(secret.len() as u64));
    (same_len & diff.ct_eq(&0)).into()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"sk-test", b"sk-test"));
        assert!(!constant_time_eq(b"sk-test", b"sk-tesT"));
        assert!(!constant_time_eq(b"sk-test", b"sk-tes"));
        // The secret repeated: same bytes cycled, different length.
        assert!(!constant_time_eq(b"sk-test", b"sk-testsk-test"));
        assert!(!constant_time_eq(b"sk-test", b""));
        assert!(!constant_time_eq(b"abc", b"abcabc"));
    }
}
