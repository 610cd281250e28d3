//! Index entries: the 32-byte unit of the on-disk runs, and the key they are ordered by.

/// Where an entry sits in time order: fire time first, then the timer record's commit-log
/// offset (unique per record), so equal fire times still have one total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    /// When the entry fires, epoch ms.
    pub(crate) fire_ms: i64,
    /// Commit-log offset of the timer record.
    pub(crate) phys: u64,
}

impl Key {
    /// Smallest key.
    pub(crate) const MIN: Key = Key {
        fire_ms: i64::MIN,
        phys: 0,
    };

    pub(crate) fn new(fire_ms: i64, phys: u64) -> Self {
        Self { fire_ms, phys }
    }

    /// The smallest key after this one.
    pub(crate) fn next(self) -> Self {
        match self.phys.checked_add(1) {
            Some(phys) => Key::new(self.fire_ms, phys),
            None => Key::new(self.fire_ms.saturating_add(1), 0),
        }
    }

    /// The first key at `fire_ms`.
    pub(crate) fn at(fire_ms: i64) -> Self {
        Key::new(fire_ms, 0)
    }
}

/// What an entry says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Deliver the record to its real topic at the fire time.
    Fire = 1,
    /// Re-write the record as a new timer at the fire time (commit-log retention).
    Roll = 2,
    /// The timer with this key is cancelled.
    Tombstone = 3,
}

impl Kind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Kind::Fire),
            2 => Some(Kind::Roll),
            3 => Some(Kind::Tombstone),
            _ => None,
        }
    }
}

/// One entry of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DiskEntry {
    pub(crate) key: Key,
    pub(crate) kind: Kind,
    /// Size of the timer record (0 for tombstones).
    pub(crate) size: u32,
}

/// Bytes per entry on disk.
pub(crate) const ENTRY_LEN: usize = 32;

/// Layout: `fire_ms i64 | phys u64 | size u32 | kind u8 | 0 u8 | 0 u16 | 0 u32 | crc u32`
/// (big-endian; the CRC-32 covers the first 28 bytes, so zeroed or torn bytes never decode).
impl DiskEntry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.key.fire_ms.to_be_bytes());
        b[8..16].copy_from_slice(&self.key.phys.to_be_bytes());
        b[16..20].copy_from_slice(&self.size.to_be_bytes());
        b[20] = self.kind as u8;
        let crc = crc32fast::hash(&b[..28]) ^ 0x5A5A_5A5A;
        b[28..32].copy_from_slice(&crc.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, &'static str> {
        let b: &[u8; ENTRY_LEN] = b
            .get(..ENTRY_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or("short entry")?;
        let crc = u32::from_be_bytes([b[28], b[29], b[30], b[31]]);
        if crc != crc32fast::hash(&b[..28]) ^ 0x5A5A_5A5A {
            return Err("entry CRC mismatch");
        }
        let i64_at = |i: usize| i64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let kind = Kind::from_u8(b[20]).ok_or("unknown entry kind")?;
        Ok(Self {
            key: Key::new(i64_at(0), i64_at(8) as u64),
            kind,
            size: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_zeroes_never_decode() {
        let e = DiskEntry {
            key: Key::new(-3, u64::MAX),
            kind: Kind::Roll,
            size: 77,
        };
        assert_eq!(DiskEntry::decode(&e.encode()), Ok(e));
        assert!(DiskEntry::decode(&[0u8; ENTRY_LEN]).is_err());
        let mut flipped = e.encode();
        flipped[3] ^= 1;
        assert!(DiskEntry::decode(&flipped).is_err());
    }

    #[test]
    fn keys_order_by_time_then_offset() {
        assert!(Key::new(1, 9) < Key::new(2, 0));
        assert!(Key::new(1, 9) < Key::new(1, 9).next());
        assert_eq!(Key::new(1, u64::MAX).next(), Key::new(2, 0));
    }
}
