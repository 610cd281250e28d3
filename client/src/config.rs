//! [`ClientConfig`]: what every producer and consumer shares: where the name servers are, who
//! this client is, and how long to wait. Each field documents its default.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::ClientError;

/// Distinguishes clients of one process, so two consumers of one group in one process get
/// different client ids (Java shares one instance per process and cannot do that). Taken by
/// each client when it is made, not by each config: configs are cloned and shared.
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(1);

/// Settings shared by every kind of client.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::ClientConfig;
///
/// let cfg = ClientConfig::new("127.0.0.1:9876;127.0.0.1:9877")
///     .with_rpc_timeout(Duration::from_secs(5))
///     .with_instance_name("billing-1");
/// assert_eq!(cfg.name_servers().len(), 2);
/// assert!(cfg.client_id().ends_with("@billing-1"));
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    namesrv_addrs: Vec<String>,
    /// Set by [`ClientConfig::with_instance_name`]; `None` for the default, `pid#nonce#n`
    /// with `n` counted per client.
    instance_name: Option<String>,
    client_ip: IpAddr,
    /// Timeout of ordinary requests (send, offsets, heartbeat, routes). Default 3 s.
    pub rpc_timeout: Duration,
    /// How long to wait for a TCP connection. Default 3 s.
    pub connect_timeout: Duration,
    /// How often routes are fetched again (RocketMQ's `pollNameServerInterval`). Default 30 s.
    pub route_refresh_interval: Duration,
    /// A topic's cached route unused (no send, rebalance, pull or offset request of a pull
    /// consumer needed it) for this long is forgotten at the next refresh, and fetched again
    /// when it is next needed. Default 10 min.
    pub route_idle_expiry: Duration,
    /// How often every known broker gets a heartbeat. Default 30 s.
    pub heartbeat_interval: Duration,
    /// Largest body accepted for sending. Default 4 MiB, the broker's default.
    pub max_message_size: usize,
    /// Send request headers in RocketMQ's binary form (`serializeTypeCurrentRPC` ROCKETMQ)
    /// rather than JSON. Every RocketMQ 4.x server reads both; Sluice answers in the form it
    /// was asked in. Binary costs a fraction of JSON to write and to read on both ends.
    /// Default true; false sends JSON, as the C++ client does.
    pub binary_headers: bool,
    /// RocketMQ ACL credentials every request is signed with. Default none.
    credentials: Option<sluice_protocol::acl::Credentials>,
    /// TLS towards name servers and brokers. Default none (plaintext).
    tls: Option<sluice_remoting::ClientTls>,
}

impl ClientConfig {
    /// A config for the given name servers: `host:port`, several separated by `;` (as
    /// RocketMQ's `namesrvAddr`).
    pub fn new(namesrv: &str) -> Self {
        Self {
            namesrv_addrs: split_addrs(namesrv),
            instance_name: None,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rpc_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            route_refresh_interval: Duration::from_secs(30),
            route_idle_expiry: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(30),
            max_message_size: 4 * 1024 * 1024,
            binary_headers: true,
            credentials: None,
            tls: None,
        }
    }

    /// Signs every request with these RocketMQ ACL credentials (`AccessKey` and `Signature`
    /// ext fields, HmacSHA1 as 4.x clients do), for brokers with ACL on. The secret never
    /// appears in `Debug` output or logs.
    #[must_use]
    pub fn with_credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(sluice_protocol::acl::Credentials::new(
            access_key, secret_key,
        ));
        self
    }

    /// Connects to name servers and brokers over TLS, trusting the CA certificates in
    /// `ca_pem` (a self-signed server certificate is its own CA) and verifying `server_name`
    /// (`None`: each address's IP must be in the certificate). For servers in
    /// `permissive` or `enforcing` TLS mode.
    pub fn with_tls(
        mut self,
        ca_pem: &std::path::Path,
        server_name: Option<String>,
    ) -> Result<Self, ClientError> {
        let tls = sluice_remoting::ClientTls::from_ca_file(ca_pem, server_name)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        self.tls = Some(tls);
        Ok(self)
    }

    /// The TLS settings, if any.
    pub fn tls(&self) -> Option<&sluice_remoting::ClientTls> {
        self.tls.as_ref()
    }

    /// The ACL credentials, if any.
    pub fn credentials(&self) -> Option<&sluice_protocol::acl::Credentials> {
        self.credentials.as_ref()
    }

    /// Sets the instance name, the part after `@` in the client id. Default
    /// `pid#nonce#n`, `n` numbered as each producer or consumer is made: unique per client
    /// object in this process even when they share one (cloned) config, and (through a
    /// per-process nonce) across hosts. A name set here is used as given by every client made
    /// from the config, so it must be unique within its consumer group.
    #[must_use]
    pub fn with_instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance_name = Some(name.into());
        self
    }

    /// Sets the IP put in the client id and in message unique keys. Default 127.0.0.1: the
    /// client does not probe the network to find its address, so set it for readable ids.
    #[must_use]
    pub fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = ip;
        self
    }

    /// Sets [`ClientConfig::rpc_timeout`].
    #[must_use]
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::route_refresh_interval`].
    #[must_use]
    pub fn with_route_refresh_interval(mut self, every: Duration) -> Self {
        self.route_refresh_interval = every;
        self
    }

    /// Sets [`ClientConfig::heartbeat_interval`].
    #[must_use]
    pub fn with_heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every;
        self
    }

    /// The name-server addresses.
    pub fn name_servers(&self) -> &[String] {
        &self.namesrv_addrs
    }

    /// `ip@instance`: the id brokers list in consumer groups, for a client made from this
    /// config with [`ClientConfig::with_instance_name`]. Without it, this is the shared
    /// prefix (`ip@pid#nonce`), and each client made from the config (or a clone of it)
    /// appends `#n`, its own number in this process.
    pub fn client_id(&self) -> String {
        match &self.instance_name {
            Some(name) => format!("{}@{name}", self.client_ip),
            None => format!(
                "{}@{}#{:06X}",
                self.client_ip,
                std::process::id(),
                process_nonce()
            ),
        }
    }

    /// The id of a client being made now: [`ClientConfig::client_id`], plus a fresh number
    /// unless the instance name was set.
    pub(crate) fn client_id_for_new_client(&self) -> String {
        match self.instance_name {
            Some(_) => self.client_id(),
            None => {
                let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
                format!("{}#{n}", self.client_id())
            }
        }
    }

    /// The IP put in unique keys.
    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.namesrv_addrs.is_empty() {
            return Err(ClientError::Config("no name server address".into()));
        }
        let durations = [
            ("rpc_timeout", self.rpc_timeout),
            ("connect_timeout", self.connect_timeout),
            ("route_refresh_interval", self.route_refresh_interval),
            ("route_idle_expiry", self.route_idle_expiry),
            ("heartbeat_interval", self.heartbeat_interval),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return Err(ClientError::Config(format!("{name} must be positive")));
            }
        }
        if self.max_message_size == 0 {
            return Err(ClientError::Config(
                "max_message_size must be positive".into(),
            ));
        }
        if self
            .instance_name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.contains('@'))
        {
            return Err(ClientError::Config(
                "instance_name must be non-empty and free of '@'".into(),
            ));
        }
        Ok(())
    }
}

fn split_addrs(text: &str) -> Vec<String> {
    text.split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A per-process nonce, so client ids of processes on different hosts that happen to share
/// a pid (and the default IP) still differ.
fn process_nonce() -> u32 {
    static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now.subsec_nanos() ^ (now.as_secs() as u32).rotate_left(16)) & 0x00FF_FFFF
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_on_semicolons_and_commas() {
        let cfg = ClientConfig::new(" a:1; b:2 ,c:3;");
        assert_eq!(cfg.name_servers(), ["a:1", "b:2", "c:3"]);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn each_client_of_one_config_gets_its_own_id_and_bad_settings_are_refused() {
        let cfg = ClientConfig::new("a:1");
        let (a, b) = (
            cfg.client_id_for_new_client(),
            cfg.clone().client_id_for_new_client(),
        );
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}#", cfg.client_id())), "{a}");
        assert!(ClientConfig::new("").validate().is_err());
        assert!(cfg.clone().with_instance_name("x@y").validate().is_err());
        let bad = ClientConfig::new("a:1").with_rpc_timeout(Duration::ZERO);
        assert!(bad.validate().is_err());
    }
}
