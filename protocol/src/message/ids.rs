//! Message ids.
//!
//! Two kinds exist (`rocketmq-protocol.md` §3.4): the *offset message id* names a stored record
//! by store address and commit-log offset, so the broker can find it without an index; the
//! *unique key* (`UNIQ_KEY`) is made by the producer and survives retries and commits. Both are
//! 32 hex characters for IPv4, so callers must know which one they hold.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why an offset message id could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageIdError {
    /// Neither 32 (IPv4) nor 56 (IPv6) characters.
    #[error("offset message id must be 32 or 56 hex characters, got {0}")]
    BadLength(usize),
    /// A character outside `[0-9a-fA-F]`.
    #[error("offset message id is not hexadecimal")]
    NotHex,
}

/// Uppercase hex of `ip | port:int32 | offset:int64`.
pub fn offset_msg_id(store_host: SocketAddr, commit_log_offset: u64) -> String {
    let mut raw = Vec::with_capacity(28);
    match store_host.ip() {
        IpAddr::V4(ip) => raw.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => raw.extend_from_slice(&ip.octets()),
    }
    raw.extend_from_slice(&u32::from(store_host.port()).to_be_bytes());
    raw.extend_from_slice(&commit_log_offset.to_be_bytes());
    hex_upper(&raw)
}

/// The store address and commit-log offset inside an offset message id.
pub fn decode_offset_msg_id(id: &str) -> Result<(SocketAddr, u64), MessageIdError> {
    let ip_len = match id.len() {
        32 => 4,
        56 => 16,
        n => return Err(MessageIdError::BadLength(n)),
    };
    let raw = unhex(id)?;
    let ip = if ip_len == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let octets: [u8; 16] = raw[..16].try_into().expect("length checked above");
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = u32::from_be_bytes(raw[ip_len..ip_len + 4].try_into().expect("length checked"));
    let offset = u64::from_be_bytes(raw[ip_len + 4..ip_len + 12].try_into().expect("checked"));
    // Ports above u16 cannot come from our own encoder; keep the low bits like Java's int.
    Ok((SocketAddr::new(ip, port as u16), offset))
}

/// Makes `UNIQ_KEY` values the way RocketMQ clients do:
/// `ip(4) | pid(2) | nonce(4) | ms since the start of this month(4) | counter(2)`, in hex.
#[derive(Debug)]
pub struct UniqKeyGenerator {
    prefix: String,
    counter: AtomicU16,
}

impl UniqKeyGenerator {
    /// A generator for this process on the host `ip`.
    pub fn new(ip: Ipv4Addr) -> Self {
        let mut raw = Vec::with_capacity(10);
        raw.extend_from_slice(&ip.octets());
        raw.extend_from_slice(&(std::process::id() as u16).to_be_bytes());
        raw.extend_from_slice(&process_nonce().to_be_bytes());
        Self {
            prefix: hex_upper(&raw),
            counter: AtomicU16::new(0),
        }
    }

    /// A new unique key.
    pub fn next_key(&self) -> String {
        let now = now_ms();
        let since_month = now.saturating_sub(start_of_month_ms(now)) as u32;
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = String::with_capacity(32);
        out.push_str(&self.prefix);
        let _ = write!(out, "{since_month:08X}{count:04X}");
        out
    }
}

fn process_nonce() -> u32 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let addr = &t as *const u32 as usize as u32;
    t.rotate_left(13) ^ addr
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Epoch milliseconds of 00:00 UTC on the first day of the month containing `ms`.
fn start_of_month_ms(ms: u64) -> u64 {
    let days = (ms / 86_400_000) as i64;
    let (y, m, _) = civil_from_days(days);
    days_from_civil(y, m, 1) as u64 * 86_400_000
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Uppercase hex by table: ids are made for every pulled message, where `write!` per byte
/// showed in profiles.
fn hex_upper(raw: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len() * 2);
    for b in raw {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
    out
}

fn unhex(s: &str) -> Result<Vec<u8>, MessageIdError> {
    let digit = |c: u8| (c as char).to_digit(16).ok_or(MessageIdError::NotHex);
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Ok((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_msg_id_round_trips_ipv4_and_ipv6() {
        let v4: SocketAddr = "10.1.2.3:10911".parse().unwrap();
        let id = offset_msg_id(v4, 0x1234_5678_9ABC);
        assert_eq!(id, "0A01020300002A9F0000123456789ABC");
        assert_eq!(decode_offset_msg_id(&id).unwrap(), (v4, 0x1234_5678_9ABC));
        assert_eq!(
            decode_offset_msg_id(&id.to_lowercase()).unwrap().1,
            0x1234_5678_9ABC
        );

        let v6: SocketAddr = "[::1]:10911".parse().unwrap();
        let id6 = offset_msg_id(v6, 42);
        assert_eq!(id6.len(), 56);
        assert_eq!(decode_offset_msg_id(&id6).unwrap(), (v6, 42));
    }

    #[test]
    fn offset_msg_id_rejects_bad_input() {
        assert_eq!(
            decode_offset_msg_id("ABC"),
            Err(MessageIdError::BadLength(3))
        );
        let bad = "Z".repeat(32);
        assert_eq!(decode_offset_msg_id(&bad), Err(MessageIdError::NotHex));
    }

    #[test]
    fn uniq_keys_are_32_hex_chars_and_distinct() {
        let g = UniqKeyGenerator::new(Ipv4Addr::LOCALHOST);
        let a = g.next_key();
        let b = g.next_key();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn calendar_helpers_agree() {
        // 2026-11-25T00:00:00Z = 20_782 days since the epoch.
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(days_from_civil(2026, 11, 1), 20_758);
        assert_eq!(
            start_of_month_ms(20_782 * 86_400_000 + 5),
            20_758 * 86_400_000
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
