//! Delay properties: which message is delayed, until when, and how it is parked.
//!
//! Pure functions, shared by the put hook, the transaction seam and the Rust API, so every
//! entry point accepts and refuses the same things (`rocketmq-protocol.md` §6, §7):
//! - `DELAY` > 0 wins: levels above the last are clamped to it, the `TIMER_*` properties are
//!   dropped (RocketMQ's `timerInterceptDelayLevel`=false). `DELAY` ≤ 0 (-1 marks a DLQ send)
//!   is no delay.
//! - Otherwise `TIMER_DELAY_SEC` > `TIMER_DELAY_MS` > `TIMER_DELIVER_MS` (first present wins).
//! - A due time at or before now is delivered at once (not parked); one further in the past
//!   than the tolerance, a negative relative delay, an unparsable value or a delay beyond the
//!   maximum is refused, except on the lenient path (a committed transaction, which the
//!   producer can no longer fix: delivered at once, or clamped to the maximum).

use sluice_broker::{PendingMessage, SCHEDULE_TOPIC};
use sluice_protocol::message::keys;
use sluice_protocol::message::record::MAX_PROPERTIES_LEN;
use sluice_protocol::Properties;

use crate::config::ScheduleConfig;

/// Where timers with an arbitrary time wait: queue 0 holds timers, queue 1 cancel markers.
pub const TIMER_TOPIC: &str = sluice_broker::TIMER_TOPIC;
/// Queue of [`TIMER_TOPIC`] holding timers.
pub const TIMER_QUEUE: i32 = 0;
/// Queue of [`TIMER_TOPIC`] holding cancel markers.
pub const CONTROL_QUEUE: i32 = 1;

/// Due time (epoch ms) of a parked message (RocketMQ 5's name); removed on delivery.
pub const TIMER_OUT_MS: &str = "TIMER_OUT_MS";
/// Added on delivery: commit-log offset of the timer record delivered (the crash check looks
/// for it, so a release interrupted by a crash is not repeated).
pub const PROP_TIMER_OFFSET: &str = "SLUICE_TIMER_OFFSET";
/// Added on delivery: the due time (epoch ms) the message was released for.
pub const PROP_DUE_MS: &str = "SLUICE_DUE_MS";
/// On a rolled copy of a timer: commit-log offset of the record it replaces.
pub const PROP_PREV: &str = "SLUICE_TIMER_PREV";
/// On a rescheduled copy: `fire_ms:offset` of the index entry it cancels.
pub const PROP_REPLACES: &str = "SLUICE_TIMER_REPLACES";
/// On a cancel marker: `fire_ms:offset` of the index entry it cancels.
pub const PROP_CANCEL: &str = "SLUICE_TIMER_CANCEL";

/// The properties only the schedule writes. A producer's are removed before anything else
/// (see `SchedulePutHook`): a delayed send carrying `SLUICE_TIMER_REPLACES` named any timer it
/// liked and cancelled it, and a plain send carrying `SLUICE_TIMER_OFFSET` could pass for a
/// timer's release in the crash check, so that timer would never be released.
pub(crate) const INTERNAL: [&str; 5] = [
    PROP_TIMER_OFFSET,
    PROP_DUE_MS,
    PROP_PREV,
    PROP_REPLACES,
    PROP_CANCEL,
];

/// What every way in (a send through the put hook, the service's own `prepare`) does first:
/// a message aimed at a schedule topic is refused (it would be indexed as a new timer at each
/// release, for ever), and the schedule's own properties are never taken from a caller
/// ([`INTERNAL`]). `Err` names the topic.
pub(crate) fn sanitize(msg: &mut PendingMessage) -> Result<(), &str> {
    if msg.input.topic == TIMER_TOPIC || msg.input.topic == SCHEDULE_TOPIC {
        return Err(&msg.input.topic);
    }
    for k in INTERNAL {
        msg.properties.remove(k);
    }
    Ok(())
}

/// Room kept in the properties for what parking, delivery and rolls add, beyond the real
/// topic's name (`REAL_TOPIC`, up to 255 bytes, counted apart): `REAL_QID`, the due time,
/// the timer's offset, `SLUICE_TIMER_PREV` and a delay level, each with its separators, come
/// to about 215 bytes. A fixed 192 for everything let an acknowledged message with a long
/// topic grow past the limit at its release, where the store refused it and it was dropped.
const PROPERTY_HEADROOM: usize = 256;

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// No delay, or already due: store it as it is.
    Immediate,
    /// Park it in `SCHEDULE_TOPIC_XXXX`, queue `level - 1`.
    Level {
        /// The level after clamping.
        level: usize,
        /// Due time, epoch ms.
        due_ms: i64,
    },
    /// Park it in [`TIMER_TOPIC`].
    Timer {
        /// Due time, epoch ms.
        due_ms: i64,
    },
}

/// True when the properties ask for any delay (cheap pre-check for the hook).
pub(crate) fn has_delay(props: &Properties) -> bool {
    props.get(keys::DELAY).is_some()
        || props.get(keys::TIMER_DELAY_SEC).is_some()
        || props.get(keys::TIMER_DELAY_MS).is_some()
        || props.get(keys::TIMER_DELIVER_MS).is_some()
}

/// Decides a message's delay; `Err` is the remark of a MESSAGE_ILLEGAL refusal.
pub(crate) fn plan(
    props: &Properties,
    now: i64,
    cfg: &ScheduleConfig,
    lenient: bool,
) -> Result<Plan, String> {
    if let Some(raw) = props.get(keys::DELAY) {
        let level: i64 = raw
            .trim()
            .parse()
            .map_err(|_| format!("DELAY must be an integer delay level, got {raw:?}"))?;
        if level > 0 {
            let (level, ms) = cfg.level_delay_ms(usize::try_from(level).unwrap_or(usize::MAX));
            return Ok(Plan::Level {
                level,
                due_ms: now.saturating_add(ms),
            });
        }
    }
    let Some(due) = timer_due(props, now, lenient)? else {
        return Ok(Plan::Immediate);
    };
    check_due(due, now, cfg, lenient)
}

/// The due time the `TIMER_*` properties ask for (SEC > MS > DELIVER), if any.
fn timer_due(props: &Properties, now: i64, lenient: bool) -> Result<Option<i64>, String> {
    let parse = |key: &str| -> Result<Option<i64>, String> {
        props
            .get(key)
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{key} must be an integer, got {v:?}"))
            })
            .transpose()
    };
    let relative = |key: &str, value: i64, unit: i64| -> Result<Option<i64>, String> {
        if value < 0 && !lenient {
            return Err(format!("{key} must not be negative, got {value}"));
        }
        Ok(Some(now.saturating_add(value.max(0).saturating_mul(unit))))
    };
    if let Some(sec) = parse(keys::TIMER_DELAY_SEC)? {
        return relative(keys::TIMER_DELAY_SEC, sec, 1000);
    }
    if let Some(ms) = parse(keys::TIMER_DELAY_MS)? {
        return relative(keys::TIMER_DELAY_MS, ms, 1);
    }
    parse(keys::TIMER_DELIVER_MS)
}

fn check_due(due: i64, now: i64, cfg: &ScheduleConfig, lenient: bool) -> Result<Plan, String> {
    let tolerance = i64::try_from(cfg.past_tolerance.as_millis()).unwrap_or(i64::MAX);
    let max = i64::try_from(cfg.max_delay.as_millis()).unwrap_or(i64::MAX);
    if due <= now {
        if lenient || now.saturating_sub(due) <= tolerance {
            return Ok(Plan::Immediate);
        }
        return Err(format!(
            "TIMER_DELIVER_MS {due} is {} ms in the past, more than the tolerance of {tolerance} ms",
            now.saturating_sub(due)
        ));
    }
    if due - now > max {
        if lenient {
            return Ok(Plan::Timer { due_ms: now + max });
        }
        return Err(format!(
            "delay of {} ms exceeds the maximum of {max} ms",
            due - now
        ));
    }
    Ok(Plan::Timer { due_ms: due })
}

/// Parks a message as `plan` says: the original destination goes to `REAL_TOPIC`/`REAL_QID`,
/// the due time to `TIMER_OUT_MS`. Returns the due time, or `None` for [`Plan::Immediate`].
pub(crate) fn park(msg: &mut PendingMessage, plan: Plan) -> Result<Option<i64>, String> {
    let (topic, queue, due) = match plan {
        Plan::Immediate => return Ok(None),
        Plan::Level { level, due_ms } => {
            msg.properties.insert(keys::DELAY, level.to_string());
            for k in [
                keys::TIMER_DELAY_SEC,
                keys::TIMER_DELAY_MS,
                keys::TIMER_DELIVER_MS,
            ] {
                msg.properties.remove(k);
            }
            (
                SCHEDULE_TOPIC,
                i32::try_from(level - 1).unwrap_or(0),
                due_ms,
            )
        }
        Plan::Timer { due_ms } => (TIMER_TOPIC, TIMER_QUEUE, due_ms),
    };
    let headroom = PROPERTY_HEADROOM + msg.input.topic.len();
    if msg.properties.encoded_len() + headroom > MAX_PROPERTIES_LEN {
        return Err(format!(
            "a delayed message's properties may be at most {} bytes to this topic",
            MAX_PROPERTIES_LEN - headroom
        ));
    }
    let props = &mut msg.properties;
    props.insert(keys::REAL_TOPIC, msg.input.topic.clone());
    props.insert(keys::REAL_QID, msg.input.queue_id.to_string());
    props.insert(TIMER_OUT_MS, due.to_string());
    msg.input.topic = topic.to_owned();
    msg.input.queue_id = queue;
    Ok(Some(due))
}

/// Encodes an index key reference (`fire_ms:offset`) for markers.
pub(crate) fn key_ref(fire_ms: i64, phys: u64) -> String {
    format!("{fire_ms}:{phys}")
}

/// Decodes [`key_ref`].
pub(crate) fn parse_key_ref(raw: &str) -> Option<(i64, u64)> {
    let (f, p) = raw.split_once(':')?;
    Some((f.parse().ok()?, p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        let mut p = Properties::new();
        for (k, v) in pairs {
            p.insert(*k, *v);
        }
        p
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn a_parked_message_that_was_accepted_still_fits_after_release_and_rolls() {
        let topic = "t".repeat(255);
        let room = MAX_PROPERTIES_LEN - PROPERTY_HEADROOM - topic.len();
        let with_filler = |len: usize| {
            let mut p = Properties::new();
            p.insert("KEYS", "k");
            let filler = len - p.encoded_len() - "PAD".len() - 2;
            p.insert("PAD", "x".repeat(filler));
            assert_eq!(p.encoded_len(), len);
            PendingMessage {
                input: sluice_store::MessageInput::new(topic.clone(), 3, "body"),
                properties: p,
            }
        };
        let plan = Plan::Timer { due_ms: i64::MAX };
        assert!(
            park(&mut with_filler(room + 1), plan).is_err(),
            "one byte over"
        );
        let mut msg = with_filler(room);
        park(&mut msg, plan).expect("accepted");
        // The most a release and a roll add, with the longest numbers.
        let p = &mut msg.properties;
        p.insert(PROP_TIMER_OFFSET, u64::MAX.to_string());
        p.insert(PROP_DUE_MS, i64::MIN.to_string());
        p.insert(PROP_PREV, key_ref(i64::MIN, u64::MAX));
        p.insert(keys::DELAY, "18");
        p.insert(keys::REAL_QID, i32::MIN.to_string());
        assert!(p.encoded_len() <= MAX_PROPERTIES_LEN, "{}", p.encoded_len());
    }

    #[test]
    fn delay_levels_clamp_and_ignore_non_positive() {
        let cfg = ScheduleConfig::default();
        let p = plan(&props(&[("DELAY", "3")]), NOW, &cfg, false).unwrap();
        assert_eq!(
            p,
            Plan::Level {
                level: 3,
                due_ms: NOW + 10_000
            }
        );
        let p = plan(&props(&[("DELAY", "40")]), NOW, &cfg, false).unwrap();
        assert_eq!(
            p,
            Plan::Level {
                level: 18,
                due_ms: NOW + 7_200_000
            }
        );
        for v in ["0", "-1"] {
            assert_eq!(
                plan(&props(&[("DELAY", v)]), NOW, &cfg, false),
                Ok(Plan::Immediate)
            );
        }
        assert!(plan(&props(&[("DELAY", "x")]), NOW, &cfg, false).is_err());
    }

    #[test]
    fn timer_properties_follow_sec_then_ms_then_deliver() {
        let cfg = ScheduleConfig::default();
        let all = props(&[
            ("TIMER_DELIVER_MS", &(NOW + 5).to_string()),
            ("TIMER_DELAY_MS", "700"),
            ("TIMER_DELAY_SEC", "2"),
        ]);
        assert_eq!(
            plan(&all, NOW, &cfg, false),
            Ok(Plan::Timer { due_ms: NOW + 2000 })
        );
        let ms = props(&[("TIMER_DELAY_MS", "700"), ("TIMER_DELIVER_MS", "1")]);
        assert_eq!(
            plan(&ms, NOW, &cfg, false),
            Ok(Plan::Timer { due_ms: NOW + 700 })
        );
        let at = props(&[("TIMER_DELIVER_MS", &(NOW + 5).to_string())]);
        assert_eq!(
            plan(&at, NOW, &cfg, false),
            Ok(Plan::Timer { due_ms: NOW + 5 })
        );
    }

    #[test]
    fn past_far_future_and_garbage_are_refused_unless_lenient() {
        let cfg = ScheduleConfig::default();
        let recent = props(&[("TIMER_DELIVER_MS", &(NOW - 3000).to_string())]);
        assert_eq!(plan(&recent, NOW, &cfg, false), Ok(Plan::Immediate));
        let old = props(&[("TIMER_DELIVER_MS", &(NOW - 60_000).to_string())]);
        assert!(plan(&old, NOW, &cfg, false)
            .unwrap_err()
            .contains("in the past"));
        assert_eq!(plan(&old, NOW, &cfg, true), Ok(Plan::Immediate));
        let far = props(&[("TIMER_DELAY_SEC", &(31 * 86_400).to_string())]);
        assert!(plan(&far, NOW, &cfg, false)
            .unwrap_err()
            .contains("maximum"));
        assert!(matches!(
            plan(&far, NOW, &cfg, true),
            Ok(Plan::Timer { .. })
        ));
        assert!(plan(&props(&[("TIMER_DELAY_MS", "-5")]), NOW, &cfg, false).is_err());
        assert!(plan(&props(&[("TIMER_DELAY_MS", "soon")]), NOW, &cfg, false).is_err());
        assert!(plan(
            &props(&[("TIMER_DELAY_SEC", "99999999999999999")]),
            NOW,
            &cfg,
            false
        )
        .is_err());
    }

    /// `now - due` overflowed for a due time of `i64::MIN` and panicked the send.
    #[test]
    fn the_most_negative_deliver_time_is_refused_not_a_panic() {
        let cfg = ScheduleConfig::default();
        let min = props(&[("TIMER_DELIVER_MS", &i64::MIN.to_string())]);
        assert!(plan(&min, NOW, &cfg, false)
            .unwrap_err()
            .contains("in the past"));
        assert_eq!(plan(&min, NOW, &cfg, true), Ok(Plan::Immediate));
    }

    #[test]
    fn key_refs_round_trip() {
        assert_eq!(parse_key_ref(&key_ref(-5, 42)), Some((-5, 42)));
        assert_eq!(parse_key_ref("5"), None);
    }
}
