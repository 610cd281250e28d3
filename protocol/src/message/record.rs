//! The stored-message record: RocketMQ's commit-log layout, which is also one element of a pull
//! response body (`rocketmq-protocol.md` §3.1).
//!
//! ```text
//! TOTALSIZE:i32 MAGIC:i32 BODYCRC:i32 QUEUEID:i32 FLAG:i32 QUEUEOFFSET:i64 PHYSICALOFFSET:i64
//! SYSFLAG:i32 BORNTIMESTAMP:i64 BORNHOST:8|20 STORETIMESTAMP:i64 STOREHOST:8|20
//! RECONSUMETIMES:i32 PREPAREDTXOFFSET:i64 BODYLEN:i32 BODY TOPICLEN:i8|i16 TOPIC PROPLEN:i16 PROPS
//! ```
//!
//! We write the V1 magic (1-byte topic length) unless the topic is longer than 127 bytes, because
//! Go and C++ clients always read a 1-byte length; and IPv4 hosts unless an address is IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Record magic with a 1-byte topic length.
pub const MAGIC_V1: u32 = 0xDAA3_20A7;
/// Record magic with a 2-byte topic length.
pub const MAGIC_V2: u32 = 0xDAA3_20AB;
/// Magic of the end-of-segment blank RocketMQ writes when a record does not fit.
pub const BLANK_MAGIC: u32 = 0xCBD4_3194;
/// Longest properties string a record can carry (its length field is an int16).
pub const MAX_PROPERTIES_LEN: usize = 32_767;

/// Byte position of QUEUEOFFSET, the same in every layout.
pub const QUEUE_OFFSET_POS: usize = 20;
/// Byte position of PHYSICALOFFSET, the same in every layout.
pub const PHYSICAL_OFFSET_POS: usize = 28;
/// Byte position of SYSFLAG.
pub const SYSFLAG_POS: usize = 36;
/// Byte position of BORNTIMESTAMP.
pub const BORN_TIMESTAMP_POS: usize = 40;
/// Smallest possible record: IPv4 hosts, V1, empty body, topic and properties.
pub const MIN_RECORD_LEN: usize = 91;

/// Message sysFlag bits (`rocketmq-protocol.md` §3.2).
pub mod sysflag {
    /// The body is compressed (zlib unless bits 8-10 say otherwise).
    pub const COMPRESSED: i32 = 0x1;
    /// The topic's filter type is MULTI_TAG.
    pub const MULTI_TAGS: i32 = 0x2;
    /// Mask of the transaction type bits.
    pub const TRANSACTION_MASK: i32 = 0xC;
    /// Not transactional.
    pub const TRANSACTION_NOT_TYPE: i32 = 0x0;
    /// A half (prepared) message.
    pub const TRANSACTION_PREPARED: i32 = 0x4;
    /// A committed transactional message.
    pub const TRANSACTION_COMMIT: i32 = 0x8;
    /// A rolled-back transactional message.
    pub const TRANSACTION_ROLLBACK: i32 = 0xC;
    /// BORNHOST is an IPv6 address (20 bytes).
    pub const BORNHOST_V6: i32 = 0x10;
    /// STOREHOST is an IPv6 address (20 bytes).
    pub const STOREHOST_V6: i32 = 0x20;

    /// The transaction type bits of `flag`.
    pub fn transaction_type(flag: i32) -> i32 {
        flag & TRANSACTION_MASK
    }

    /// `flag` with the address-family bits set from the addresses, as a stored record has
    /// them whatever the message said.
    pub fn with_host_bits(
        flag: i32,
        born: std::net::SocketAddr,
        store: std::net::SocketAddr,
    ) -> i32 {
        let mut flag = flag & !(BORNHOST_V6 | STOREHOST_V6);
        if born.is_ipv6() {
            flag |= BORNHOST_V6;
        }
        if store.is_ipv6() {
            flag |= STOREHOST_V6;
        }
        flag
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than the record needs; more input may complete it.
    #[error("record incomplete: need {needed} bytes, have {available}")]
    Incomplete {
        /// Bytes the record claims or needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// TOTALSIZE is out of range.
    #[error("record length {0} is out of range")]
    BadLength(i64),
    /// Not a record magic.
    #[error("bad record magic {0:#010x}")]
    BadMagic(u32),
    /// The inner lengths do not add up to TOTALSIZE.
    #[error("record fields do not add up: {0}")]
    Inconsistent(&'static str),
    /// A field is too long for its length prefix.
    #[error("{field} too long: {len} bytes (max {max})")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// BODYCRC does not match the body.
    #[error("body CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyCrc {
        /// CRC in the record.
        stored: u32,
        /// CRC of the body bytes.
        computed: u32,
    },
}

/// The fixed fields of a record, everything but body, topic and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Queue id within the topic.
    pub queue_id: i32,
    /// The user's int flag, stored untouched.
    pub flag: i32,
    /// Logical index in the consume queue (0 for prepared and rollback records).
    pub queue_offset: i64,
    /// Commit-log offset of this record.
    pub physical_offset: i64,
    /// Message sysFlag; the host IPv6 bits are set by the encoder from the addresses.
    pub sys_flag: i32,
    /// Producer timestamp, epoch ms.
    pub born_timestamp: i64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// Store timestamp, epoch ms.
    pub store_timestamp: i64,
    /// Broker address.
    pub store_host: SocketAddr,
    /// How many times this message was consumed again.
    pub reconsume_times: i32,
    /// For a committed transactional message, the half message's commit-log offset.
    pub prepared_transaction_offset: i64,
}

impl Default for RecordHeader {
    fn default() -> Self {
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        Self {
            queue_id: 0,
            flag: 0,
            queue_offset: 0,
            physical_offset: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: unspecified,
            store_timestamp: 0,
            store_host: unspecified,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        }
    }
}

/// Length of the record that [`encode_record`] writes for these parts.
pub fn record_len(header: &RecordHeader, body: &[u8], topic: &str, properties: &[u8]) -> usize {
    let host = |a: &SocketAddr| if a.is_ipv4() { 8 } else { 20 };
    let topic_len_field = if topic.len() > 127 { 2 } else { 1 };
    4 * 5
        + 8 * 2
        + 4
        + 8
        + host(&header.born_host)
        + 8
        + host(&header.store_host)
        + 4
        + 8
        + 4
        + body.len()
        + topic_len_field
        + topic.len()
        + 2
        + properties.len()
}

/// Appends one encoded record to `out`, computing TOTALSIZE and BODYCRC.
///
/// Fails only when a field is longer than its length prefix allows.
pub fn encode_record(
    header: &RecordHeader,
    body: &[u8],
    topic: &str,
    properties: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    encode_record_with_crc(header, body, body_crc(body), topic, properties, out)
}

/// [`encode_record`] with BODYCRC computed by the caller (`body_crc(body)`), so a store can
/// compute it on the producer's thread rather than on its single writer thread.
pub fn encode_record_with_crc(
    header: &RecordHeader,
    body: &[u8],
    crc: u32,
    topic: &str,
    properties: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    check_len("topic", topic.len(), u16::MAX as usize)?;
    check_len("properties", properties.len(), MAX_PROPERTIES_LEN)?;
    check_len(
        "body",
        body.len(),
        i32::MAX as usize - 512 - topic.len() - properties.len(),
    )?;
    let total = record_len(header, body, topic, properties);
    let v2 = topic.len() > 127;
    let sys_flag = sysflag::with_host_bits(header.sys_flag, header.born_host, header.store_host);
    out.reserve(total);
    out.extend_from_slice(&(total as i32).to_be_bytes());
    out.extend_from_slice(&(if v2 { MAGIC_V2 } else { MAGIC_V1 }).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&header.queue_id.to_be_bytes());
    out.extend_from_slice(&header.flag.to_be_bytes());
    out.extend_from_slice(&header.queue_offset.to_be_bytes());
    out.extend_from_slice(&header.physical_offset.to_be_bytes());
    out.extend_from_slice(&sys_flag.to_be_bytes());
    out.extend_from_slice(&header.born_timestamp.to_be_bytes());
    put_host(out, &header.born_host);
    out.extend_from_slice(&header.store_timestamp.to_be_bytes());
    put_host(out, &header.store_host);
    out.extend_from_slice(&header.reconsume_times.to_be_bytes());
    out.extend_from_slice(&header.prepared_transaction_offset.to_be_bytes());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    if v2 {
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    } else {
        out.push(topic.len() as u8);
    }
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&(properties.len() as u16).to_be_bytes());
    out.extend_from_slice(properties);
    Ok(total)
}

/// RocketMQ's BODYCRC: CRC-32/IEEE of the stored body, masked to 31 bits.
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body) & 0x7FFF_FFFF
}

/// Byte position of STORETIMESTAMP for a record with this sysFlag.
pub fn store_timestamp_pos(sys_flag: i32) -> usize {
    if sys_flag & sysflag::BORNHOST_V6 != 0 {
        68
    } else {
        56
    }
}

/// Overwrites the fields the store assigns at append time in an encoded record. The encoder
/// already left room for them, so no length changes.
pub fn patch_store_fields(
    record: &mut [u8],
    queue_offset: i64,
    physical_offset: i64,
    store_ts: i64,
) {
    record[QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8].copy_from_slice(&queue_offset.to_be_bytes());
    record[PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8]
        .copy_from_slice(&physical_offset.to_be_bytes());
    let flag = i32::from_be_bytes(record[SYSFLAG_POS..SYSFLAG_POS + 4].try_into().unwrap());
    let pos = store_timestamp_pos(flag);
    record[pos..pos + 8].copy_from_slice(&store_ts.to_be_bytes());
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), RecordError> {
    if len > max {
        return Err(RecordError::TooLong { field, len, max });
    }
    Ok(())
}

fn put_host(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&i32::from(addr.port()).to_be_bytes());
}

/// A validated, borrowed view of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// TOTALSIZE.
    pub total_size: usize,
    /// The fixed fields.
    pub header: RecordHeader,
    /// BODYCRC as stored.
    pub body_crc: u32,
    /// The stored (possibly compressed) body.
    pub body: &'a [u8],
    /// The topic.
    pub topic: &'a str,
    /// The raw properties string.
    pub properties: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Parses the record at the start of `buf`, checking every length against the bytes at hand
    /// before using it. `max_len` bounds TOTALSIZE (a store passes its record limit).
    ///
    /// [`RecordError::Incomplete`] means `buf` ends inside a record that may yet be valid.
    pub fn parse(buf: &'a [u8], max_len: usize) -> Result<Self, RecordError> {
        let mut r = Reader { buf, pos: 0 };
        let total = r.i32()? as i64;
        if total < MIN_RECORD_LEN as i64 || total as u64 > max_len as u64 {
            return Err(RecordError::BadLength(total));
        }
        let total = total as usize;
        let magic = r.i32()? as u32;
        if magic != MAGIC_V1 && magic != MAGIC_V2 {
            return Err(RecordError::BadMagic(magic));
        }
        if buf.len() < total {
            return Err(RecordError::Incomplete {
                needed: total,
                available: buf.len(),
            });
        }
        // Every byte of the record is at hand now: a field that runs past TOTALSIZE is a
        // corrupt record, not one more input could complete.
        Self::parse_whole(&buf[..total], magic).map_err(|e| match e {
            RecordError::Incomplete { .. } => {
                RecordError::Inconsistent("a field runs past TOTALSIZE")
            }
            other => other,
        })
    }

    /// The rest of [`RecordView::parse`], over exactly one record's bytes.
    fn parse_whole(buf: &'a [u8], magic: u32) -> Result<Self, RecordError> {
        let total = buf.len();
        let mut r = Reader { buf, pos: 8 };
        let body_crc = r.i32()? as u32;
        let mut header = RecordHeader {
            queue_id: r.i32()?,
            flag: r.i32()?,
            queue_offset: r.i64()?,
            physical_offset: r.i64()?,
            sys_flag: r.i32()?,
            born_timestamp: r.i64()?,
            ..RecordHeader::default()
        };
        header.born_host = r.host(header.sys_flag & sysflag::BORNHOST_V6 != 0)?;
        header.store_timestamp = r.i64()?;
        header.store_host = r.host(header.sys_flag & sysflag::STOREHOST_V6 != 0)?;
        header.reconsume_times = r.i32()?;
        header.prepared_transaction_offset = r.i64()?;
        let body_len = r.len_i32()?;
        let body = r.take(body_len)?;
        let topic_len = if magic == MAGIC_V2 {
            r.u16()? as usize
        } else {
            r.u8()? as usize
        };
        let topic = std::str::from_utf8(r.take(topic_len)?)
            .map_err(|_| RecordError::Inconsistent("topic is not UTF-8"))?;
        let props_len = r.u16()? as usize;
        let properties = r.take(props_len)?;
        if r.pos != total {
            return Err(RecordError::Inconsistent("trailing bytes inside TOTALSIZE"));
        }
        Ok(Self {
            total_size: total,
            header,
            body_crc,
            body,
            topic,
            properties,
        })
    }

    /// Checks BODYCRC against the body.
    pub fn verify_body_crc(&self) -> Result<(), RecordError> {
        let computed = body_crc(self.body);
        if computed != self.body_crc {
            return Err(RecordError::BodyCrc {
                stored: self.body_crc,
                computed,
            });
        }
        Ok(())
    }

    /// The transaction type bits of the sysFlag.
    pub fn transaction_type(&self) -> i32 {
        sysflag::transaction_type(self.header.sys_flag)
    }
}

/// A bounds-checked big-endian cursor: every read fails cleanly at the end of input.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(RecordError::Incomplete {
                needed: self.pos.saturating_add(n),
                available: self.buf.len(),
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len_i32(&mut self) -> Result<usize, RecordError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| RecordError::Inconsistent("negative body length"))
    }
    fn host(&mut self, v6: bool) -> Result<SocketAddr, RecordError> {
        let ip = if v6 {
            let o: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let o = self.take(4)?;
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
        };
        let port = self.i32()?;
        Ok(SocketAddr::new(ip, port as u16))
    }
}

#[cfg(test)]
mod tests;
