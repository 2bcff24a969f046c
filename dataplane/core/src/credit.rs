//! Credit-based flow control: the one copy that relay and client links share.
//!
//! Every receiver grants its sender a window in the sender's own link-sequence space, Aeron
//! style: "Data up to link sequence `g` may come". The receiver grants `highest received +
//! window` once it has *processed* what it received, so a sender can never have more than a
//! window of datagrams in flight beyond what the receiver has taken off its socket — the
//! window is sized to fit the receiver's socket buffer, so overload shows up as a sender that
//! waits, not as datagrams the kernel drops. Only Data waits for credit; control datagrams
//! (Subscribe, Unsubscribe, Nak, Credit) always leave, or two nodes waiting on each other's
//! Credit would deadlock.
//!
//! Sequences are the link's: Data lost on the way still moves the receiver's highest
//! sequence, so loss never shrinks the window. A Credit lost on the way is covered two ways:
//! the receiver re-grants at least every [`CREDIT_REFRESH_US`] while data arrives, and a
//! sender that has waited [`CREDIT_PROBE_US`] sends one datagram beyond its window (a probe),
//! whose arrival makes the receiver grant again.
//!
//! The sender numbers its datagrams when they leave (not when they are built), so a control
//! datagram that overtakes held Data never pushes the held datagrams behind the receiver's
//! replay window.

use crate::relay::Micros;

/// The window a receiver grants, in datagrams beyond the highest it has processed. 2048
/// full datagrams are 3 MB: within the 8 MiB socket buffers nodes and clients ask for, with
/// room for a second sender into the same socket.
pub const CREDIT_WINDOW_DATAGRAMS: u64 = 2048;
/// A sender that has had Data waiting this long without credit sends one datagram anyway.
pub const CREDIT_PROBE_US: Micros = 20_000;
/// While data arrives, a receiver re-grants at least this often even if its window moved
/// less than a quarter (a lost Credit costs at most this much).
pub const CREDIT_REFRESH_US: Micros = 10_000;

/// The sending side of one link-sequence space (a link, or a client's link to one shard).
#[derive(Clone, Copy, Debug)]
pub struct SendCredit {
    /// Highest link sequence Data may carry.
    limit: u64,
    /// Since when Data has waited for credit.
    stalled_since: Option<Micros>,
    next_probe_us: Micros,
    /// One datagram may leave beyond the limit (a probe).
    probe: bool,
}

impl SendCredit {
    /// A sender whose first datagram will carry `first_seq` may send `window` datagrams
    /// before the receiver's first grant.
    pub fn new(first_seq: u64, window: u64) -> Self {
        Self { limit: first_seq.saturating_add(window.max(1) - 1), stalled_since: None, next_probe_us: 0, probe: false }
    }

    /// Data datagrams that may leave now when the next one carries `next_seq`.
    pub fn allowance(&self, next_seq: u64) -> u64 {
        if next_seq <= self.limit {
            self.limit - next_seq + 1
        } else {
            u64::from(self.probe)
        }
    }

    /// Records that Data left; `next_seq` is the sequence after the last one sent.
    pub fn sent(&mut self, next_seq: u64) {
        if next_seq > self.limit.saturating_add(1) {
            self.probe = false;
        }
    }

    /// Data waits for credit from `now_us` on (idempotent). True when the stall begins now.
    pub fn stall(&mut self, now_us: Micros) -> bool {
        if self.stalled_since.is_some() {
            return false;
        }
        self.stalled_since = Some(now_us);
        self.next_probe_us = now_us + CREDIT_PROBE_US;
        true
    }

    /// Takes a grant. True when it ends a stall (the sender may send again).
    pub fn grant(&mut self, granted: u64) -> bool {
        if granted <= self.limit {
            return false;
        }
        self.limit = granted;
        self.probe = false;
        self.stalled_since.take().is_some()
    }

    /// Forgets a stall without a grant (the waiting Data was dropped).
    pub fn clear_stall(&mut self) {
        self.stalled_since = None;
        self.probe = false;
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled_since.is_some()
    }

    /// How long Data has waited for credit, if it waits.
    pub fn stalled_for(&self, now_us: Micros) -> Option<Micros> {
        self.stalled_since.map(|since| now_us.saturating_sub(since))
    }

    /// When the next probe is due, if Data waits.
    pub fn probe_due_us(&self) -> Option<Micros> {
        self.stalled_since.map(|_| self.next_probe_us)
    }

    /// Allows one probe if it is due; true if it did.
    pub fn take_probe(&mut self, now_us: Micros) -> bool {
        if self.stalled_since.is_none() || now_us < self.next_probe_us {
            return false;
        }
        self.probe = true;
        self.next_probe_us = now_us + CREDIT_PROBE_US;
        true
    }
}

/// The receiving side of one link-sequence space: what to grant, and when.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrantCredit {
    highest: Option<u64>,
    granted: u64,
    last_grant_us: Option<Micros>,
}

impl GrantCredit {
    /// A datagram with link sequence `seq` was processed.
    pub fn received(&mut self, seq: u64) {
        self.highest = Some(self.highest.map_or(seq, |highest| highest.max(seq)));
    }

    /// The grant to send now, if one is due: the window moved by a quarter since the last
    /// grant, or [`CREDIT_REFRESH_US`] passed. Records it as sent.
    pub fn due(&mut self, now_us: Micros, window: u64) -> Option<u64> {
        let grant = self.highest?.saturating_add(window);
        let moved = grant >= self.granted.saturating_add(window / 4);
        let stale = self.last_grant_us.is_none_or(|last| now_us >= last + CREDIT_REFRESH_US);
        if !(moved || stale) {
            return None;
        }
        self.granted = self.granted.max(grant);
        self.last_grant_us = Some(now_us);
        Some(self.granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_stops_at_its_window_and_resumes_on_a_grant() {
        let mut credit = SendCredit::new(100, 4);
        assert_eq!(credit.allowance(100), 4);
        assert_eq!(credit.allowance(103), 1);
        assert_eq!(credit.allowance(104), 0);
        assert!(credit.stall(1_000));
        assert!(!credit.stall(2_000), "a stall begins once");
        assert_eq!(credit.stalled_for(5_000), Some(4_000));
        assert!(!credit.grant(103), "an old grant changes nothing");
        assert!(credit.grant(110));
        assert_eq!(credit.allowance(104), 7);
        assert!(!credit.is_stalled());
    }

    #[test]
    fn a_stalled_sender_probes_once_per_interval() {
        let mut credit = SendCredit::new(0, 1);
        assert_eq!(credit.allowance(1), 0);
        credit.stall(0);
        assert_eq!(credit.probe_due_us(), Some(CREDIT_PROBE_US));
        assert!(!credit.take_probe(CREDIT_PROBE_US - 1));
        assert!(credit.take_probe(CREDIT_PROBE_US));
        assert_eq!(credit.allowance(1), 1, "one probe beyond the window");
        credit.sent(2);
        assert_eq!(credit.allowance(2), 0, "the probe is used up");
        assert!(!credit.take_probe(CREDIT_PROBE_US + 1), "the next probe waits an interval");
        assert!(credit.take_probe(2 * CREDIT_PROBE_US));
    }

    #[test]
    fn a_receiver_grants_on_a_quarter_window_or_when_stale() {
        let mut grant = GrantCredit::default();
        assert_eq!(grant.due(0, 100), None, "nothing received, nothing to grant");
        grant.received(10);
        assert_eq!(grant.due(0, 100), Some(110));
        grant.received(20);
        assert_eq!(grant.due(1, 100), None, "moved by less than a quarter, not stale");
        grant.received(35);
        assert_eq!(grant.due(2, 100), Some(135));
        grant.received(36);
        assert_eq!(grant.due(2 + CREDIT_REFRESH_US, 100), Some(136), "stale: granted again");
        grant.received(5);
        assert_eq!(grant.due(2 + 3 * CREDIT_REFRESH_US, 100), Some(136), "a late old datagram never lowers a grant");
    }
}
