//! `[acl]`: RocketMQ-compatible access control of the broker's TCP side (`docs/SECURITY.md`).
//! Secret keys are never printed: the effective configuration logged at start shows them as
//! `<redacted>`, and `Debug` hides them too.
//!
//! ```toml
//! [acl]
//! enabled = true
//! [[acl.accounts]]
//! access_key = "orders-app"
//! secret_key = "change-me-please"
//! default_topic_perm = "DENY"
//! default_group_perm = "DENY"
//! topic_perms = { Orders = "PUB|SUB" }
//! group_perms = { billing = "SUB" }
//! ```
//! From the environment: `SLUICE_ACL_ENABLED=true`,
//! `SLUICE_ACL_ACCOUNTS='[{access_key = "...", secret_key = "...", admin = true}]'`.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize, Serializer};
use sluice_broker::acl::{AclAccount, AclConfig, AddressPattern, Perm};

/// `[acl]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclSection {
    /// Check signatures and permissions on every broker request. Default false.
    pub enabled: bool,
    /// With ACL off, accept admin request codes (create topic…) from any peer, not only
    /// loopback. Default false.
    pub allow_remote_admin: bool,
    /// `[[acl.accounts]]`.
    pub accounts: Vec<AccountSection>,
    /// Peers trusted without signatures, with every right, as RocketMQ's
    /// `globalWhiteRemoteAddresses`: `192.168.0.7`, `192.168.1.*`, `10.0.0.1-9`,
    /// `10.0.1.{3,5}`, `10.0.0.0/8`, `*`. Default none.
    pub white_remote_addresses: Vec<String>,
}

/// `[[acl.accounts]]`
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSection {
    /// The access key clients send (at least 7 characters).
    pub access_key: String,
    /// The secret key (at least 7 characters). Never printed.
    #[serde(serialize_with = "redacted")]
    pub secret_key: String,
    /// Admin rights (admin request codes, every topic and group). Default false.
    #[serde(default)]
    pub admin: bool,
    /// `DENY` (default), `PUB`, `SUB` or `PUB|SUB` for topics not in `topic_perms`.
    #[serde(default = "deny")]
    pub default_topic_perm: String,
    /// The same for groups not in `group_perms`. Default `DENY`.
    #[serde(default = "deny")]
    pub default_group_perm: String,
    /// Topic name → permission.
    #[serde(default)]
    pub topic_perms: BTreeMap<String, String>,
    /// Consumer group → permission.
    #[serde(default)]
    pub group_perms: BTreeMap<String, String>,
}

impl std::fmt::Debug for AccountSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSection")
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

fn deny() -> String {
    "DENY".into()
}

fn redacted<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

impl AclSection {
    /// The broker's access-control configuration (validated).
    pub fn to_config(&self) -> Result<AclConfig> {
        let mut accounts = Vec::with_capacity(self.accounts.len());
        for a in &self.accounts {
            let name = format!("acl.accounts[{:?}]", a.access_key);
            let perm = |text: &str, what: &str| {
                Perm::parse(text).map_err(|e| anyhow!("{name}.{what}: {e}"))
            };
            let mut topic_perms = std::collections::HashMap::new();
            for (topic, p) in &a.topic_perms {
                topic_perms.insert(topic.clone(), perm(p, &format!("topic_perms.{topic}"))?);
            }
            let mut group_perms = std::collections::HashMap::new();
            for (group, p) in &a.group_perms {
                group_perms.insert(group.clone(), perm(p, &format!("group_perms.{group}"))?);
            }
            accounts.push(AclAccount {
                access_key: a.access_key.clone(),
                secret_key: a.secret_key.clone(),
                admin: a.admin,
                default_topic_perm: perm(&a.default_topic_perm, "default_topic_perm")?,
                default_group_perm: perm(&a.default_group_perm, "default_group_perm")?,
                topic_perms,
                group_perms,
            });
        }
        let white_remote_addresses = self
            .white_remote_addresses
            .iter()
            .map(|p| {
                AddressPattern::parse(p).map_err(|e| anyhow!("acl.white_remote_addresses: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let cfg = AclConfig {
            enabled: self.enabled,
            allow_remote_admin: self.allow_remote_admin,
            accounts,
            white_remote_addresses,
        };
        cfg.validate().map_err(|e| anyhow!(e))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_map_to_the_broker_config_and_secrets_are_never_printed() {
        let text = r#"
            enabled = true
            [[accounts]]
            access_key = "orders-app"
            secret_key = "s3cret-value-42"
            topic_perms = { Orders = "PUB|SUB" }
            group_perms = { billing = "SUB" }
        "#;
        let section: AclSection = toml::from_str(text).unwrap();
        let cfg = section.to_config().unwrap();
        assert!(cfg.enabled);
        let a = &cfg.accounts[0];
        assert_eq!(a.topic_perm("Orders"), Perm::PubSub);
        assert_eq!(a.group_perm("billing"), Perm::Sub);
        assert_eq!(a.topic_perm("Other"), Perm::Deny);
        let json = serde_json::to_string(&section).unwrap();
        assert!(!json.contains("s3cret-value-42"), "{json}");
        assert!(json.contains("<redacted>"));
        assert!(!format!("{section:?}").contains("s3cret-value-42"));
        assert!(!format!("{cfg:?}").contains("s3cret-value-42"));
    }

    #[test]
    fn bad_permissions_and_enabled_without_accounts_are_refused() {
        let on: AclSection = toml::from_str("enabled = true").unwrap();
        assert!(on.to_config().is_err());
        let bad: AclSection = toml::from_str(
            "[[accounts]]\naccess_key = \"account1\"\nsecret_key = \"secret-1\"\ndefault_topic_perm = \"ALL\"\n",
        )
        .unwrap();
        let err = format!("{:#}", bad.to_config().unwrap_err());
        assert!(err.contains("default_topic_perm"), "{err}");
        assert!(!err.contains("secret-1"), "{err}");
    }

    #[test]
    fn white_remote_addresses_are_parsed_and_malformed_ones_refused() {
        let ok: AclSection =
            toml::from_str("white_remote_addresses = [\"10.0.0.*\", \"192.168.1.{3,5}\"]").unwrap();
        let cfg = ok.to_config().unwrap();
        assert_eq!(cfg.white_remote_addresses.len(), 2);
        assert!(cfg.white_remote_addresses[1].matches("192.168.1.5".parse().unwrap()));
        let bad: AclSection = toml::from_str("white_remote_addresses = [\"10.0\"]").unwrap();
        let err = format!("{:#}", bad.to_config().unwrap_err());
        assert!(err.contains("white_remote_addresses"), "{err}");
    }
}
