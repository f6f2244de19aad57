//! Token-bucket policer with a byte bucket and a packet bucket.

use crate::control::messages::RateLimit;

/// Default bucket depth: how long a burst at line rate may exceed the rate.
pub const DEFAULT_BURST_MS: u32 = 10;

#[derive(Debug, Clone)]
struct Bucket {
    rate_per_s: f64,
    depth: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate_per_s: f64, burst_ms: u32, min_depth: f64) -> Self {
        let depth = (rate_per_s * f64::from(burst_ms) / 1000.0).max(min_depth);
        Self {
            rate_per_s,
            depth,
            tokens: depth,
        }
    }

    #[inline]
    fn refill(&mut self, elapsed_s: f64) {
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.depth);
    }
}

/// A policer: a frame passes if both buckets (those configured) hold enough tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes: Option<Bucket>,
    packets: Option<Bucket>,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket for `limit`, starting at `now_ns`.
    pub fn new(limit: &RateLimit, now_ns: u64) -> Self {
        let burst = limit.burst_ms.unwrap_or(DEFAULT_BURST_MS);
        Self {
            // Depth at least one full-size frame, or a big frame could never pass.
            bytes: limit
                .bits_per_sec
                .map(|bps| Bucket::new(bps as f64 / 8.0, burst, 1518.0)),
            packets: limit
                .packets_per_sec
                .map(|pps| Bucket::new(pps as f64, burst, 1.0)),
            last_ns: now_ns,
        }
    }

    /// Takes tokens for one frame of `len` bytes at `now_ns`; false if it must be dropped.
    #[inline]
    pub fn admit(&mut self, len: usize, now_ns: u64) -> bool {
        if now_ns > self.last_ns {
            let elapsed = (now_ns - self.last_ns) as f64 * 1e-9;
            self.last_ns = now_ns;
            if let Some(b) = &mut self.bytes {
                b.refill(elapsed);
            }
            if let Some(p) = &mut self.packets {
                p.refill(elapsed);
            }
        }
        let len = len as f64;
        let bytes_ok = self.bytes.as_ref().is_none_or(|b| b.tokens >= len);
        let packets_ok = self.packets.as_ref().is_none_or(|p| p.tokens >= 1.0);
        if !(bytes_ok && packets_ok) {
            return false;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= len;
        }
        if let Some(p) = &mut self.packets {
            p.tokens -= 1.0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `offered_pps` frames of `len` bytes for `secs` simulated seconds.
    fn passed(limit: RateLimit, len: usize, offered_pps: u64, secs: u64) -> u64 {
        let mut tb = TokenBucket::new(&limit, 0);
        let step = 1_000_000_000 / offered_pps;
        (0..offered_pps * secs)
            .filter(|i| tb.admit(len, i * step))
            .count() as u64
    }

    #[test]
    fn bps_limit_is_within_one_percent() {
        // 8 Mbit/s of 1000-byte frames = 1000 frames/s, offered at 10000/s for 10 s.
        let limit = RateLimit {
            bits_per_sec: Some(8_000_000),
            packets_per_sec: None,
            burst_ms: None,
        };
        let n = passed(limit, 1000, 10_000, 10);
        assert!((9_900..=10_100).contains(&n), "{n}");
    }

    #[test]
    fn pps_limit_is_within_one_percent() {
        let limit = RateLimit {
            bits_per_sec: None,
            packets_per_sec: Some(5_000),
            burst_ms: None,
        };
        let n = passed(limit, 64, 50_000, 4);
        assert!((19_800..=20_200).contains(&n), "{n}");
    }

    #[test]
    fn tighter_of_both_limits_wins() {
        let limit = RateLimit {
            bits_per_sec: Some(80_000_000),
            packets_per_sec: Some(1_000),
            burst_ms: None,
        };
        let n = passed(limit, 100, 20_000, 5);
        assert!((4_950..=5_050).contains(&n), "{n}");
    }
}
