//! Access control of the broker's TCP side: RocketMQ ACL 1.0 signatures (see
//! [`sluice_protocol::acl`] for the exact rule), per-topic and per-group permissions, and the
//! admin rule. `docs/SECURITY.md` is the operator's view.
//!
//! With ACL on, every request must carry the `AccessKey` of a configured account and a
//! `Signature` that account's secret produced (compared in constant time); then the request
//! must be allowed for that account: see [`resources`] for what each request code needs.
//! Refusals are answered NO_PERMISSION (16) before any handler runs, so nothing is stored, and
//! logged (access key, peer, request code, resource; never a secret or a signature).
//!
//! Admin request codes (RocketMQ's list: create/update topic, broker config, delete topic,
//! create/delete subscription group) need an admin account with ACL on; with ACL off they are
//! accepted only from loopback peers unless [`AclConfig::allow_remote_admin`] is set.
//!
//! Peers matching [`AclConfig::white_remote_addresses`] (RocketMQ's
//! `globalWhiteRemoteAddresses`, see [`white`]) skip every check, admin included.
//!
//! The name server does not check signatures (as RocketMQ 4.x's does not).

mod resources;
pub mod white;

use std::collections::HashMap;
use std::net::SocketAddr;

use sluice_protocol::acl;
use sluice_protocol::RemotingCommand;

pub use resources::{is_admin_code, ADMIN_CODES};
use resources::{needed, Need};
pub use white::AddressPattern;

/// A permission, as RocketMQ's `plain_acl.yml` spells it: `DENY`, `PUB`, `SUB` or `PUB|SUB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Perm {
    /// Nothing (the default for topics and groups not listed).
    #[default]
    Deny,
    /// Send.
    Pub,
    /// Consume.
    Sub,
    /// Both.
    PubSub,
}

impl Perm {
    /// Parses `DENY`, `PUB`, `SUB`, `PUB|SUB` or `SUB|PUB` (surrounding spaces ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "DENY" => Ok(Self::Deny),
            "PUB" => Ok(Self::Pub),
            "SUB" => Ok(Self::Sub),
            "PUB|SUB" | "SUB|PUB" => Ok(Self::PubSub),
            other => Err(format!(
                "permission must be DENY, PUB, SUB or PUB|SUB, not {other:?}"
            )),
        }
    }

    /// True when this permission grants `needed` (`Pub` or `Sub`).
    pub fn allows(self, needed: Perm) -> bool {
        match needed {
            Perm::Pub => matches!(self, Perm::Pub | Perm::PubSub),
            Perm::Sub => matches!(self, Perm::Sub | Perm::PubSub),
            Perm::PubSub => self == Perm::PubSub,
            Perm::Deny => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Perm::Deny => "DENY",
            Perm::Pub => "PUB",
            Perm::Sub => "SUB",
            Perm::PubSub => "PUB|SUB",
        }
    }
}

/// One account. `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct AclAccount {
    /// The access key clients send in `AccessKey`. At least 7 characters, like RocketMQ.
    pub access_key: String,
    /// The secret key. At least 7 characters. Never logged, never in `Debug`.
    pub secret_key: String,
    /// May use admin request codes, and every topic and group. Default false.
    pub admin: bool,
    /// Permission on topics not in `topic_perms`. Default `Deny`.
    pub default_topic_perm: Perm,
    /// Permission on groups not in `group_perms`. Default `Deny`.
    pub default_group_perm: Perm,
    /// Per-topic permissions (exact names).
    pub topic_perms: HashMap<String, Perm>,
    /// Per-consumer-group permissions (exact names); `%RETRY%<group>` topics use these.
    pub group_perms: HashMap<String, Perm>,
}

impl std::fmt::Debug for AclAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclAccount")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("admin", &self.admin)
            .field("default_topic_perm", &self.default_topic_perm)
            .field("default_group_perm", &self.default_group_perm)
            .field("topic_perms", &self.topic_perms)
            .field("group_perms", &self.group_perms)
            .finish()
    }
}

impl AclAccount {
    /// The permission on `topic`; a `%RETRY%<group>` topic takes `group`'s, and so does a
    /// `%DLQ%<group>` topic not named in `topic_perms`: with a default topic permission of
    /// SUB, an account could otherwise pull (or copy by a send-back) any group's dead letters.
    pub fn topic_perm(&self, topic: &str) -> Perm {
        if let Some(group) = topic.strip_prefix(crate::RETRY_PREFIX) {
            return self.group_perm(group);
        }
        if let Some(perm) = self.topic_perms.get(topic) {
            return *perm;
        }
        match topic.strip_prefix(crate::DLQ_PREFIX) {
            Some(group) => self.group_perm(group),
            None => self.default_topic_perm,
        }
    }

    /// The permission on consumer group `group`.
    pub fn group_perm(&self, group: &str) -> Perm {
        self.group_perms
            .get(group)
            .copied()
            .unwrap_or(self.default_group_perm)
    }
}

/// Access control of the broker. Default: off, no accounts, admin codes from loopback only.
#[derive(Debug, Clone, Default)]
pub struct AclConfig {
    /// Check signatures and permissions on every request. Default false.
    pub enabled: bool,
    /// With ACL off, accept admin request codes from any peer, not only loopback. Default
    /// false. (With ACL on, admin codes need an admin account whatever the peer.)
    pub allow_remote_admin: bool,
    /// The accounts. Access keys must be unique.
    pub accounts: Vec<AclAccount>,
    /// Peers trusted without signatures, with every right (RocketMQ's
    /// `globalWhiteRemoteAddresses`). Default none. Only with ACL on.
    pub white_remote_addresses: Vec<AddressPattern>,
}

/// Shortest access or secret key, as RocketMQ's `PlainPermissionManager` requires.
pub const MIN_KEY_LEN: usize = 7;

impl AclConfig {
    /// Checks the accounts; errors never quote a secret.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.accounts.is_empty() {
            return Err("acl: enabled needs at least one account".into());
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.accounts {
            if a.access_key.chars().count() < MIN_KEY_LEN {
                return Err(format!(
                    "acl: access key {:?} must have at least {MIN_KEY_LEN} characters",
                    a.access_key
                ));
            }
            if a.secret_key.chars().count() < MIN_KEY_LEN {
                return Err(format!(
                    "acl: the secret key of {:?} must have at least {MIN_KEY_LEN} characters",
                    a.access_key
                ));
            }
            if !seen.insert(a.access_key.as_str()) {
                return Err(format!(
                    "acl: access key {:?} is listed twice",
                    a.access_key
                ));
            }
        }
        Ok(())
    }

    fn account(&self, access_key: &str) -> Option<&AclAccount> {
        self.accounts.iter().find(|a| a.access_key == access_key)
    }
}

/// A refusal: the remark of the NO_PERMISSION answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// Decides whether `req`, from `peer`, may run. `Err` is answered NO_PERMISSION.
///
/// `Ok` holds the access key the request runs under: `None` with ACL off, or from a trusted
/// peer, which skips every check (an access key it happens to send must not narrow what it
/// may do: registered under it, it could lose its producer group's checks).
pub fn authorize<'a>(
    cfg: &AclConfig,
    peer: SocketAddr,
    req: &'a RemotingCommand,
) -> Result<Option<&'a str>, Denied> {
    if !cfg.enabled {
        if is_admin_code(req.code) && !cfg.allow_remote_admin && !is_loopback(peer) {
            tracing::warn!(remote = %peer, code = req.code, decision = "deny", "ACL off: admin request from a non-loopback peer refused");
            return Err(Denied(format!(
                "request code {} is an admin operation, accepted only from loopback peers while ACL is off",
                req.code
            )));
        }
        return Ok(None);
    }
    if trusted(cfg, peer) {
        return Ok(None);
    }
    let access_key = req
        .ext_fields
        .get_str(acl::ACCESS_KEY)
        .filter(|k| !k.is_empty());
    let signature = req
        .ext_fields
        .get_str(acl::SIGNATURE)
        .filter(|s| !s.is_empty());
    let (Some(access_key), Some(_)) = (access_key, signature) else {
        tracing::warn!(remote = %peer, code = req.code, decision = "deny", "ACL: unsigned request refused");
        return Err(Denied(
            "ACL: request is not signed (AccessKey and Signature ext fields required)".into(),
        ));
    };
    // Unknown key and wrong signature get the same answer.
    let account = cfg
        .account(access_key)
        .filter(|a| acl::verify(req, &a.secret_key));
    let Some(account) = account else {
        tracing::warn!(remote = %peer, access_key = %access_key, code = req.code, decision = "deny", "ACL: unknown access key or bad signature");
        return Err(Denied(format!(
            "ACL: signature check failed for access key {access_key}"
        )));
    };
    if account.admin {
        return Ok(Some(access_key));
    }
    for need in needed(req) {
        let (ok, what) = match &need {
            Need::Admin => (false, "admin rights".to_string()),
            Need::Topic(topic, perm) => (
                account.topic_perm(topic).allows(*perm),
                format!("{} on topic {topic}", perm.name()),
            ),
            Need::Group(group, perm) => (
                account.group_perm(group).allows(*perm),
                format!("{} on group {group}", perm.name()),
            ),
        };
        if !ok {
            return Err(refused(peer, access_key, req.code, &what));
        }
    }
    Ok(Some(access_key))
}

/// May a connection registered by `access_key` (None: ACL off, or a trusted address) receive
/// the transaction checks of `topic`, which carry its half messages? Only if its account may
/// publish there: otherwise any account could register under another producer group and read
/// that group's transactions.
pub(crate) fn may_take_checks(cfg: &AclConfig, access_key: Option<&str>, topic: &str) -> bool {
    if !cfg.enabled {
        return true;
    }
    let Some(key) = access_key else {
        return true; // registered from a trusted address, which skips every check
    };
    cfg.account(key)
        .is_some_and(|a| a.admin || a.topic_perm(topic).allows(Perm::Pub))
}

/// For a request [`authorize`] let through on its signature alone, whose resource is known only
/// once the handler has read it (VIEW_MESSAGE_BY_ID's record, END_TRANSACTION's half message):
/// may the request's account `perm` on `topic`? Broker-internal topics (half, op, schedule,
/// timer, system; `topic::is_admin_only`) need an admin account. Always `Ok` with ACL off or from a
/// trusted address. The request must have passed [`authorize`] (every request does before its
/// handler runs): its signature is not verified again.
pub fn authorize_topic(
    cfg: &AclConfig,
    peer: SocketAddr,
    req: &RemotingCommand,
    topic: &str,
    perm: Perm,
) -> Result<(), Denied> {
    if !cfg.enabled || trusted(cfg, peer) {
        return Ok(());
    }
    let access_key = req.ext_fields.get_str(acl::ACCESS_KEY).unwrap_or_default();
    let Some(account) = cfg.account(access_key) else {
        return Err(Denied(format!("ACL: unknown access key {access_key}")));
    };
    if account.admin {
        return Ok(());
    }
    // Retry and dead-letter topics take their group's permission (`topic_perm`).
    if crate::topic::is_admin_only(topic) || !account.topic_perm(topic).allows(perm) {
        let what = format!("{} on topic {topic}", perm.name());
        return Err(refused(peer, access_key, req.code, &what));
    }
    Ok(())
}

/// A signed request whose account lacks `what`: logged, and the answer's text.
fn refused(peer: SocketAddr, access_key: &str, code: i32, what: &str) -> Denied {
    tracing::warn!(remote = %peer, access_key = %access_key, code, needed = %what, decision = "deny", "ACL: permission refused");
    Denied(format!(
        "ACL: access key {access_key} has no {what} (request code {code})"
    ))
}

/// A peer matching [`AclConfig::white_remote_addresses`], which skips every check.
fn trusted(cfg: &AclConfig, peer: SocketAddr) -> bool {
    cfg.white_remote_addresses
        .iter()
        .any(|p| p.matches(peer.ip()))
}

fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_parse_and_grant_like_rocketmq() {
        assert_eq!(Perm::parse(" SUB|PUB ").unwrap(), Perm::PubSub);
        assert!(Perm::parse("ALL").is_err());
        assert!(Perm::PubSub.allows(Perm::Pub) && Perm::PubSub.allows(Perm::Sub));
        assert!(Perm::Pub.allows(Perm::Pub) && !Perm::Pub.allows(Perm::Sub));
        assert!(!Perm::Deny.allows(Perm::Pub) && !Perm::Deny.allows(Perm::Sub));
    }

    #[test]
    fn retry_topics_take_the_group_permission() {
        let a = AclAccount {
            group_perms: [("billing".to_string(), Perm::Sub)].into(),
            topic_perms: [("Orders".to_string(), Perm::Pub)].into(),
            ..AclAccount::default()
        };
        assert_eq!(a.topic_perm("%RETRY%billing"), Perm::Sub);
        assert_eq!(a.topic_perm("%RETRY%other"), Perm::Deny);
        assert_eq!(a.topic_perm("Orders"), Perm::Pub);
        assert_eq!(a.topic_perm("Other"), Perm::Deny);
    }

    #[test]
    fn validation_refuses_short_or_duplicate_keys_without_quoting_secrets() {
        let acct = |ak: &str, sk: &str| AclAccount {
            access_key: ak.into(),
            secret_key: sk.into(),
            ..AclAccount::default()
        };
        let mut cfg = AclConfig {
            enabled: true,
            ..AclConfig::default()
        };
        assert!(cfg.validate().is_err());
        cfg.accounts = vec![acct("account1", "short")];
        let err = cfg.validate().unwrap_err();
        assert!(!err.contains("short"), "{err}");
        cfg.accounts = vec![acct("account1", "secret-1"), acct("account1", "secret-2")];
        assert!(cfg.validate().is_err());
        cfg.accounts = vec![acct("account1", "secret-1")];
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("secret-1"));
    }

    #[test]
    fn a_trusted_peer_is_registered_without_its_access_key() {
        let account = AclAccount {
            access_key: "limited".into(),
            secret_key: "limited-secret".into(),
            admin: false,
            default_topic_perm: Perm::PubSub,
            default_group_perm: Perm::PubSub,
            topic_perms: HashMap::new(),
            group_perms: HashMap::new(),
        };
        let cfg = AclConfig {
            enabled: true,
            white_remote_addresses: vec![AddressPattern::parse("10.0.0.*").unwrap()],
            accounts: vec![account],
            ..AclConfig::default()
        };
        let mut req = RemotingCommand::request(10, Default::default());
        acl::Credentials::new("limited", "limited-secret").sign(&mut req);
        let trusted: SocketAddr = "10.0.0.7:1".parse().unwrap();
        let other: SocketAddr = "10.0.1.7:1".parse().unwrap();
        assert_eq!(authorize(&cfg, trusted, &req), Ok(None));
        assert_eq!(authorize(&cfg, other, &req), Ok(Some("limited")));
    }

    #[test]
    fn loopback_includes_mapped_ipv4() {
        assert!(is_loopback("127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(is_loopback("[::1]:1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1:1".parse().unwrap()));
    }
}
