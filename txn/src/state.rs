//! The per-transaction state machine, as pure data and one pure function ([`plan`]), so every
//! edge is unit-tested without a broker. `docs/TRANSACTIONS.md` draws the same table.
//!
//! ```text
//!            commit / rollback / discard / park          append ok
//!   Open ─────────────────────────────────────▶ Resolving ─────────▶ Committed | RolledBack
//!    ▲  ▲                                          │                  | Discarded | Parked
//!    │  └──────────── append failed ◀──────────────┘
//!    │                                          rearm / commit / rollback
//!    └──────────── rearm (append ok) ◀── Parked ─────────────────────▶ Resolving
//! ```
//!
//! A decision is taken in memory (the state becomes `Resolving`, which nobody else may change)
//! and becomes final only once its records are durable; a failed append restores the state it
//! came from. Requests that meet `Resolving` wait for the outcome and are then judged against
//! the final state, so two different decisions can never both take effect.

use std::fmt;

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// Stored, undecided; checked back on schedule.
    Open,
    /// A decision is being made durable; `from_parked` says where to return if that fails.
    Resolving {
        /// The decision in flight.
        decision: Decision,
        /// True when it left `Parked` (a failed append returns there), false for `Open`.
        from_parked: bool,
    },
    /// The real message was stored in its topic.
    Committed,
    /// Rolled back by the producer, a check answer or an operator.
    RolledBack,
    /// Rolled back by the broker after `check_max` checks (final action `rollback`).
    Discarded,
    /// Checks exhausted with final action `keep`: undecided, no longer checked, copied to
    /// `TRANS_CHECK_MAX_TIME_TOPIC`. A commit, rollback or re-arm may still come.
    Parked,
}

impl TxnState {
    /// True for the states no decision leaves (committed, rolled back, discarded).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Committed | Self::RolledBack | Self::Discarded)
    }

    /// True while the transaction is undecided (open, parked or being resolved).
    pub fn is_live(self) -> bool {
        !self.is_final()
    }

    /// A short lowercase name for views and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolving { .. } => "resolving",
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::Discarded => "discarded",
            Self::Parked => "parked",
        }
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What somebody wants to happen to a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Store the real message.
    Commit,
    /// Discard the half message.
    Rollback,
    /// The final action `rollback`, taken by the broker.
    Discard,
    /// The final action `keep`, taken by the broker.
    Park,
    /// An operator restarts the checks of a parked transaction.
    Rearm,
}

impl Decision {
    /// The state reached when the decision is applied.
    pub fn target(self) -> TxnState {
        match self {
            Self::Commit => TxnState::Committed,
            Self::Rollback => TxnState::RolledBack,
            Self::Discard => TxnState::Discarded,
            Self::Park => TxnState::Parked,
            Self::Rearm => TxnState::Open,
        }
    }

    /// The op-record spelling (`TXN_OP` property).
    pub fn op_name(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Rollback => "rollback",
            Self::Discard => "discard",
            Self::Park => "park",
            Self::Rearm => "rearm",
        }
    }

    /// Parses [`Decision::op_name`].
    pub fn from_op_name(s: &str) -> Option<Self> {
        Some(match s {
            "commit" => Self::Commit,
            "rollback" => Self::Rollback,
            "discard" => Self::Discard,
            "park" => Self::Park,
            "rearm" => Self::Rearm,
            _ => return None,
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op_name())
    }
}

/// Who asked for a decision (kept on the op record and shown to operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// END_TRANSACTION after the local transaction (not from a check).
    Producer,
    /// END_TRANSACTION answering a check-back, or a pulled/URL check answered over HTTP.
    CheckAnswer,
    /// An operator's force or re-arm.
    Operator,
    /// The broker's final action after `check_max` checks.
    FinalAction,
    /// Restart found a commit stored without its op record and completed it.
    Recovery,
}

impl Source {
    /// The op-record spelling (`TXN_BY` property).
    pub fn name(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::CheckAnswer => "check",
            Self::Operator => "operator",
            Self::FinalAction => "final",
            Self::Recovery => "recovery",
        }
    }

    /// Parses [`Source::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "producer" => Self::Producer,
            "check" => Self::CheckAnswer,
            "operator" => Self::Operator,
            "final" => Self::FinalAction,
            "recovery" => Self::Recovery,
            _ => return None,
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a producer answered to a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckAnswer {
    /// COMMIT_MESSAGE.
    Commit,
    /// ROLLBACK_MESSAGE.
    Rollback,
    /// UNKNOW: still running; checks go on.
    Unknown,
}

impl CheckAnswer {
    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Rollback => "rollback",
            Self::Unknown => "unknown",
        }
    }
}

/// What [`plan`] says to do with a decision in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Enter `Resolving` and make the decision durable.
    Apply,
    /// Nothing to do: the state already is what was asked (idempotent success).
    Already,
    /// Another decision is in flight: wait for it, then plan again.
    Wait,
    /// Refused: the transaction went the other way (or the decision does not apply).
    Refuse,
}

/// The transition table: what `decision` does to a transaction in `state`.
pub fn plan(state: TxnState, decision: Decision) -> Plan {
    use Decision as D;
    use TxnState as S;
    match (state, decision) {
        (S::Resolving { .. }, _) => Plan::Wait,
        (S::Open, D::Rearm) => Plan::Already,
        (S::Open, _) => Plan::Apply,
        (S::Parked, D::Commit | D::Rollback | D::Rearm) => Plan::Apply,
        (S::Parked, D::Park) => Plan::Already,
        (S::Parked, D::Discard) => Plan::Refuse,
        (S::Committed, D::Commit) => Plan::Already,
        (S::RolledBack | S::Discarded, D::Rollback) => Plan::Already,
        (S::Discarded, D::Discard) => Plan::Already,
        (S::RolledBack, D::Discard) => Plan::Already,
        (S::Committed | S::RolledBack | S::Discarded, _) => Plan::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [TxnState; 7] = [
        TxnState::Open,
        TxnState::Resolving {
            decision: Decision::Commit,
            from_parked: false,
        },
        TxnState::Resolving {
            decision: Decision::Rollback,
            from_parked: true,
        },
        TxnState::Committed,
        TxnState::RolledBack,
        TxnState::Discarded,
        TxnState::Parked,
    ];
    const DECISIONS: [Decision; 5] = [
        Decision::Commit,
        Decision::Rollback,
        Decision::Discard,
        Decision::Park,
        Decision::Rearm,
    ];

    /// The whole table, written out once more by hand: a change to [`plan`] must change this.
    fn expected(s: TxnState, d: Decision) -> Plan {
        use Decision::*;
        use Plan::*;
        match s {
            TxnState::Open => [Apply, Apply, Apply, Apply, Already][d as usize],
            TxnState::Resolving { .. } => Wait,
            TxnState::Committed => [Already, Refuse, Refuse, Refuse, Refuse][d as usize],
            TxnState::RolledBack => [Refuse, Already, Already, Refuse, Refuse][d as usize],
            TxnState::Discarded => [Refuse, Already, Already, Refuse, Refuse][d as usize],
            TxnState::Parked => match d {
                Commit | Rollback | Rearm => Apply,
                Park => Already,
                Discard => Refuse,
            },
        }
    }

    #[test]
    fn every_edge_of_the_table() {
        for s in STATES {
            for d in DECISIONS {
                assert_eq!(plan(s, d), expected(s, d), "{s:?} + {d:?}");
            }
        }
    }

    #[test]
    fn a_final_state_is_never_left() {
        for s in STATES.iter().filter(|s| s.is_final()) {
            for d in DECISIONS {
                let p = plan(*s, d);
                assert!(p == Plan::Already || p == Plan::Refuse, "{s:?} + {d:?}");
            }
        }
    }

    #[test]
    fn commit_and_rollback_exclude_each_other() {
        // Whichever is applied first, the other is refused afterwards.
        assert_eq!(
            plan(Decision::Commit.target(), Decision::Rollback),
            Plan::Refuse
        );
        assert_eq!(
            plan(Decision::Rollback.target(), Decision::Commit),
            Plan::Refuse
        );
        assert_eq!(
            plan(Decision::Discard.target(), Decision::Commit),
            Plan::Refuse
        );
        assert_eq!(
            plan(Decision::Rearm.target(), Decision::Commit),
            Plan::Apply
        );
    }

    #[test]
    fn names_round_trip() {
        for d in DECISIONS {
            assert_eq!(Decision::from_op_name(d.op_name()), Some(d));
        }
        for s in [
            Source::Producer,
            Source::CheckAnswer,
            Source::Operator,
            Source::FinalAction,
            Source::Recovery,
        ] {
            assert_eq!(Source::from_name(s.name()), Some(s));
        }
    }
}
