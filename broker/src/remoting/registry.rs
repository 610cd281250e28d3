//! Every open connection of a server, by id, so the server can reach a client on its own
//! initiative (NOTIFY_CONSUMER_IDS_CHANGED now, CHECK_TRANSACTION_STATE later).

use std::collections::HashMap;

use parking_lot::Mutex;

use sluice_remoting::ConnectionHandle;

/// Open connections by id. Entries are added by the connection task when it starts and removed
/// by it when it ends, so a handle found here was open a moment ago (it may close at any time).
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    map: Mutex<HashMap<u64, ConnectionHandle>>,
}

impl ConnectionRegistry {
    pub(crate) fn insert(&self, conn: ConnectionHandle) {
        self.map.lock().insert(conn.id(), conn);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    /// The connection with this id, if still open.
    pub fn get(&self, id: u64) -> Option<ConnectionHandle> {
        self.map.lock().get(&id).cloned()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    /// Every open connection.
    pub fn all(&self) -> Vec<ConnectionHandle> {
        self.map.lock().values().cloned().collect()
    }
}
