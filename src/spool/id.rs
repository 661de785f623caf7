//! Queue IDs: 60-bit, time-sortable, printed as 12 characters of Crockford
//! base32 (no I, L, O or U, so they are safe to read aloud and type).
//!
//! Layout: 48 bits of Unix milliseconds, then a 12-bit sequence within the
//! millisecond. The generator never goes backwards, even when the clock does.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Bits of the per-millisecond sequence at the low end of a queue id.
pub const SEQ_BITS: u32 = 12;

/// A message's identity in the queue and in every log line about it.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct QueueId(pub u64);

impl QueueId {
    /// The big-endian key bytes; sled orders these by time.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Reads an id from the first 8 bytes of a key.
    pub fn from_key(key: &[u8]) -> Option<QueueId> {
        key.get(..8)
            .and_then(|b| b.try_into().ok())
            .map(|b| QueueId(u64::from_be_bytes(b)))
    }

    /// The Unix time in milliseconds at which the id was made.
    pub fn millis(self) -> i64 {
        (self.0 >> SEQ_BITS) as i64
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 12];
        for (i, b) in buf.iter_mut().enumerate() {
            let shift = 55 - 5 * i as u32;
            *b = ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        // The alphabet is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&buf).unwrap_or("????????????"))
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why text is not a queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a queue ID (12 characters of 0-9 and A-Z)")]
pub struct BadQueueId(pub String);

impl FromStr for QueueId {
    type Err = BadQueueId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_end_matches(['*', '!']);
        if t.len() != 12 {
            return Err(BadQueueId(s.to_string()));
        }
        let mut v: u64 = 0;
        for c in t.bytes() {
            let d = match c.to_ascii_uppercase() {
                b'O' => 0,
                b'I' | b'L' => 1,
                c => ALPHABET
                    .iter()
                    .position(|&a| a == c)
                    .ok_or_else(|| BadQueueId(s.to_string()))? as u64,
            };
            v = (v << 5) | d;
        }
        Ok(QueueId(v))
    }
}

/// Makes unique, increasing ids.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator that only returns ids above `floor` (the newest id in the
    /// spool), so a clock that went back cannot reuse an id.
    pub fn new(floor: u64) -> IdGenerator {
        IdGenerator {
            last: AtomicU64::new(floor),
        }
    }

    /// The next id for the current time.
    pub fn next(&self) -> QueueId {
        let now = (chrono::Utc::now().timestamp_millis().max(0) as u64) << SEQ_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(last + 1);
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return QueueId(candidate),
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let g = IdGenerator::default();
        let a = g.next();
        let b = g.next();
        assert!(b > a);
        let text = a.to_string();
        assert_eq!(text.len(), 12);
        assert_eq!(text.parse::<QueueId>(), Ok(a));
        assert_eq!(text.to_lowercase().parse::<QueueId>(), Ok(a));
        assert_eq!(format!("{text}*").parse::<QueueId>(), Ok(a));
        assert!(
            a.to_string() < b.to_string(),
            "text order follows time order"
        );
        assert!("01JD4X2K8M3".parse::<QueueId>().is_err());
        assert!("01JD4X2K8M3$".parse::<QueueId>().is_err());
    }

    #[test]
    fn generator_never_goes_back() {
        let far_future = u64::MAX >> 8;
        let g = IdGenerator::new(far_future);
        assert_eq!(g.next().0, far_future + 1);
    }
}
