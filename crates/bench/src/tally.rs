//! Delivery accounting for the chat and MUC scenarios: which generated messages reached
//! which sessions, counted by message and recipient rather than by totals, so that one
//! failure cannot hide another (a duplicate does not make up for a loss, and a message
//! delivered to the wrong session does not count as delivered).
//!
//! Every message travels in a *lane*: from one sender to one user (chat) or from one
//! sender to the room (MUC). Its id is the sender's index, the lane and the lane's
//! sequence number, which starts at 0 and has no gaps, so that a receiver can keep a
//! bit per message ([`Inbox`]) and a sender only a count per lane ([`Outbox`]). Each
//! reader and each writer keeps its own (no lock, no shared counter per delivery); they
//! are merged once, after the run ([`tally`]).
//!
//! A received copy is one of:
//! - delivered: the first copy of a message to a session among its intended recipients
//!   (the addressed user; for a room, the occupants at send time, which in a bench run
//!   are all the sessions: they all join before the load and none leaves);
//! - duplicated: every further copy of the same message to the same session;
//! - misrouted: a copy to a session that was not among its intended recipients, or of
//!   a message that was never sent (a sender, lane or sequence number no writer used).
//!
//! Lost: the (message, intended recipient) pairs never delivered.

/// Who a generated message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressee {
    /// One user, by session index (chat).
    User(u32),
    /// The run's room (MUC).
    Room,
}

/// What the reader makes of one received copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    Delivered,
    Duplicate,
    Misrouted,
}

/// Lane sequence numbers at or above this are not believed (a body corrupted on the way)
/// and count as misrouted, so that a bad number cannot make a reader allocate without
/// bound: 2^28 messages in one lane is far beyond any bench run.
const MAX_SEQ: u64 = 1 << 28;

/// What one session received: a bit per message of each sender's lane to it, and its
/// counts. Owned by the session's reader.
#[derive(Clone, Debug)]
pub struct Inbox {
    me: u32,
    /// The lane this session is a recipient of: its own (chat) or the room's (MUC).
    lane: Addressee,
    senders: usize,
    /// Per sender, a bitset over the lane's sequence numbers; grown as needed.
    seen: Vec<Vec<u64>>,
    /// First copies of messages of its lane (including any never sent: see [`tally`]).
    unique: u64,
    duplicated: u64,
    misrouted: u64,
}

impl Inbox {
    /// The inbox of session `me` of `senders`, expecting the messages of `lane`.
    pub fn new(me: u32, lane: Addressee, senders: usize) -> Inbox {
        Inbox { me, lane, senders, seen: Vec::new(), unique: 0, duplicated: 0, misrouted: 0 }
    }

    /// Records one received copy of message `seq` of `sender`'s lane to `to`.
    pub fn receive(&mut self, sender: u32, to: Addressee, seq: u64) -> Receipt {
        let s = sender as usize;
        if to != self.lane || s >= self.senders || seq >= MAX_SEQ {
            self.misrouted += 1;
            return Receipt::Misrouted;
        }
        if self.seen.len() <= s {
            self.seen.resize_with(s + 1, Vec::new);
        }
        let bits = &mut self.seen[s];
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & bit != 0 {
            self.duplicated += 1;
            return Receipt::Duplicate;
        }
        bits[word] |= bit;
        self.unique += 1;
        Receipt::Delivered
    }

    fn has(&self, sender: usize, seq: u64) -> bool {
        let Some(bits) = self.seen.get(sender) else { return false };
        bits.get((seq / 64) as usize).is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// How many of `sender`'s first `count` messages in this lane arrived.
    fn seen_below(&self, sender: usize, count: u64) -> u64 {
        let Some(bits) = self.seen.get(sender) else { return 0 };
        let full = (count / 64) as usize;
        let mut n: u64 = bits.iter().take(full).map(|w| u64::from(w.count_ones())).sum();
        let rest = count % 64;
        if rest > 0 {
            if let Some(w) = bits.get(full) {
                n += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        n
    }
}

/// What one sender sent: a count per lane. Owned by the session's writer.
#[derive(Clone, Debug)]
pub struct Outbox {
    sender: u32,
    to_user: Vec<u64>,
    to_room: u64,
    /// The message whose write failed (the writer stops there): it may or may not have
    /// left, so it is expected only if it arrived.
    in_doubt: Option<(Addressee, u64)>,
}

impl Outbox {
    pub fn new(sender: u32, users: usize) -> Outbox {
        Outbox { sender, to_user: vec![0; users], to_room: 0, in_doubt: None }
    }

    /// The sequence number the next message to `to` gets (not yet counted as sent).
    pub fn next_seq(&self, to: Addressee) -> u64 {
        match to {
            Addressee::User(u) => self.to_user.get(u as usize).copied().unwrap_or(0),
            Addressee::Room => self.to_room,
        }
    }

    /// Counts the message [`Outbox::next_seq`] numbered as sent (once it was written).
    pub fn sent(&mut self, to: Addressee) {
        match to {
            Addressee::User(u) => {
                if let Some(c) = self.to_user.get_mut(u as usize) {
                    *c += 1;
                }
            }
            Addressee::Room => self.to_room += 1,
        }
    }

    /// Counts the message [`Outbox::next_seq`] numbered as in doubt: its write failed.
    pub fn failed(&mut self, to: Addressee) {
        self.in_doubt = Some((to, self.next_seq(to)));
        self.sent(to);
    }

    /// Messages written, all lanes (not the one in doubt).
    pub fn total(&self) -> u64 {
        self.to_user.iter().sum::<u64>() + self.to_room - u64::from(self.in_doubt.is_some())
    }

    /// Whether the message in doubt, if any, is in `lane` and did not reach `inbox`.
    fn doubt_missing(&self, lane: Addressee, inbox: Option<&Inbox>) -> bool {
        match self.in_doubt {
            Some((l, seq)) if l == lane => !inbox.is_some_and(|i| i.has(self.sender as usize, seq)),
            _ => false,
        }
    }
}

/// The accounting of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// (message, intended recipient) pairs.
    pub expected: u64,
    /// Pairs delivered at least once.
    pub delivered: u64,
    /// Pairs never delivered: `expected - delivered`.
    pub lost: u64,
    /// Copies beyond the first of a delivered pair.
    pub duplicated: u64,
    /// Copies to a session that was not an intended recipient, or of a message never sent.
    pub misrouted: u64,
}

/// Merges the writers' and readers' records. `inboxes` are indexed by session (an
/// inbox's `me` is its index); `room`: the sessions in the room while the load ran
/// (every session, in a bench run).
pub fn tally(outboxes: &[Outbox], inboxes: &[Inbox], room: &[u32]) -> Tally {
    let mut by_me: Vec<Option<&Inbox>> = Vec::new();
    for inbox in inboxes {
        let i = inbox.me as usize;
        if by_me.len() <= i {
            by_me.resize(i + 1, None);
        }
        by_me[i] = Some(inbox);
    }
    // An inbox only holds bits of its own lane, so it counts for a lane only if that
    // lane is its.
    let lane_of = |r: u32, lane: Addressee| by_me.get(r as usize).copied().flatten().filter(|i| i.lane == lane);
    let mut t = Tally::default();
    for out in outboxes {
        let s = out.sender as usize;
        for (r, &count) in out.to_user.iter().enumerate() {
            if count > 0 {
                let lane = Addressee::User(r as u32);
                let inbox = lane_of(r as u32, lane);
                t.expected += count - u64::from(out.doubt_missing(lane, inbox));
                t.delivered += inbox.map_or(0, |i| i.seen_below(s, count));
            }
        }
        if out.to_room > 0 {
            for &r in room {
                let inbox = lane_of(r, Addressee::Room);
                t.expected += out.to_room - u64::from(out.doubt_missing(Addressee::Room, inbox));
                t.delivered += inbox.map_or(0, |i| i.seen_below(s, out.to_room));
            }
        }
    }
    t.lost = t.expected - t.delivered;
    t.duplicated = inboxes.iter().map(|i| i.duplicated).sum();
    // First copies that no writer accounts for: sequence numbers never sent.
    let unique: u64 = inboxes.iter().map(|i| i.unique).sum();
    t.misrouted = inboxes.iter().map(|i| i.misrouted).sum::<u64>() + unique.saturating_sub(t.delivered);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat run among three users: sender 0 sends two messages to user 1 and one to
    /// user 2.
    fn chat_run() -> (Vec<Outbox>, Vec<Inbox>) {
        let mut out0 = Outbox::new(0, 3);
        for to in [1, 1, 2] {
            out0.sent(Addressee::User(to));
        }
        let outboxes = vec![out0, Outbox::new(1, 3), Outbox::new(2, 3)];
        let inboxes = (0..3).map(|me| Inbox::new(me, Addressee::User(me), 3)).collect();
        (outboxes, inboxes)
    }

    #[test]
    fn everything_delivered_once() {
        let (outboxes, mut inboxes) = chat_run();
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 0), Receipt::Delivered);
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 1), Receipt::Delivered);
        assert_eq!(inboxes[2].receive(0, Addressee::User(2), 0), Receipt::Delivered);
        let t = tally(&outboxes, &inboxes, &[]);
        assert_eq!(t, Tally { expected: 3, delivered: 3, ..Tally::default() });
    }

    #[test]
    fn a_duplicate_does_not_mask_a_loss() {
        let (outboxes, mut inboxes) = chat_run();
        // Message 0 to user 1 twice, message 1 to user 1 never: totals would balance.
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 0), Receipt::Delivered);
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 0), Receipt::Duplicate);
        assert_eq!(inboxes[2].receive(0, Addressee::User(2), 0), Receipt::Delivered);
        let t = tally(&outboxes, &inboxes, &[]);
        assert_eq!(t, Tally { expected: 3, delivered: 2, lost: 1, duplicated: 1, misrouted: 0 });
    }

    #[test]
    fn a_misrouted_message_is_not_delivered() {
        let (outboxes, mut inboxes) = chat_run();
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 0), Receipt::Delivered);
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 1), Receipt::Delivered);
        // The message for user 2 reaches user 0 instead (twice: each copy is misrouted).
        assert_eq!(inboxes[0].receive(0, Addressee::User(2), 0), Receipt::Misrouted);
        assert_eq!(inboxes[0].receive(0, Addressee::User(2), 0), Receipt::Misrouted);
        let t = tally(&outboxes, &inboxes, &[]);
        assert_eq!(t, Tally { expected: 3, delivered: 2, lost: 1, duplicated: 0, misrouted: 2 });
    }

    #[test]
    fn loss_duplicate_and_misroute_together_are_each_reported() {
        let (outboxes, mut inboxes) = chat_run();
        inboxes[1].receive(0, Addressee::User(1), 0);
        inboxes[1].receive(0, Addressee::User(1), 0);
        inboxes[0].receive(0, Addressee::User(2), 0);
        let t = tally(&outboxes, &inboxes, &[]);
        assert_eq!(t, Tally { expected: 3, delivered: 1, lost: 2, duplicated: 1, misrouted: 1 });
    }

    #[test]
    fn messages_never_sent_are_misrouted() {
        let (outboxes, mut inboxes) = chat_run();
        // Sequence 2 of the lane 0 -> 1 was never sent; sender 7 does not exist; a
        // corrupted huge sequence number allocates nothing.
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), 2), Receipt::Delivered);
        assert_eq!(inboxes[1].receive(7, Addressee::User(1), 0), Receipt::Misrouted);
        assert_eq!(inboxes[1].receive(0, Addressee::User(1), u64::MAX), Receipt::Misrouted);
        // A groupchat copy in a chat run.
        assert_eq!(inboxes[2].receive(0, Addressee::Room, 0), Receipt::Misrouted);
        let t = tally(&outboxes, &inboxes, &[]);
        assert_eq!(t, Tally { expected: 3, delivered: 0, lost: 3, duplicated: 0, misrouted: 4 });
        assert!(inboxes[1].seen.iter().map(Vec::len).sum::<usize>() <= 1);
    }

    #[test]
    fn a_failed_write_is_expected_only_where_it_arrived() {
        // Sender 0's third message (to user 1) failed to write: expected only if it
        // reached user 1.
        let mut out0 = Outbox::new(0, 3);
        out0.sent(Addressee::User(1));
        out0.sent(Addressee::User(2));
        out0.failed(Addressee::User(1));
        assert_eq!(out0.total(), 2);
        let outboxes = vec![out0];
        let fresh = || -> Vec<Inbox> { (0..3).map(|me| Inbox::new(me, Addressee::User(me), 3)).collect() };
        let mut inboxes = fresh();
        inboxes[1].receive(0, Addressee::User(1), 0);
        inboxes[2].receive(0, Addressee::User(2), 0);
        assert_eq!(tally(&outboxes, &inboxes, &[]), Tally { expected: 2, delivered: 2, ..Tally::default() });
        inboxes[1].receive(0, Addressee::User(1), 1);
        assert_eq!(tally(&outboxes, &inboxes, &[]), Tally { expected: 3, delivered: 3, ..Tally::default() });
        // Still nothing masks a loss: without user 2's message it is lost.
        let mut inboxes = fresh();
        inboxes[1].receive(0, Addressee::User(1), 0);
        inboxes[1].receive(0, Addressee::User(1), 1);
        assert_eq!(tally(&outboxes, &inboxes, &[]), Tally { expected: 3, delivered: 2, lost: 1, ..Tally::default() });
    }

    #[test]
    fn room_fanout_counts_every_occupant() {
        // Three occupants; sender 1 sends 70 messages (across a bitset word), sender 2 one.
        let mut outboxes: Vec<Outbox> = (0..3).map(|s| Outbox::new(s, 3)).collect();
        for _ in 0..70 {
            outboxes[1].sent(Addressee::Room);
        }
        outboxes[2].sent(Addressee::Room);
        assert_eq!(outboxes[1].total(), 70);
        let mut inboxes: Vec<Inbox> = (0..3).map(|me| Inbox::new(me, Addressee::Room, 3)).collect();
        for inbox in &mut inboxes {
            for seq in 0..70 {
                inbox.receive(1, Addressee::Room, seq);
            }
            inbox.receive(2, Addressee::Room, 0);
        }
        let room = [0, 1, 2];
        assert_eq!(tally(&outboxes, &inboxes, &room), Tally { expected: 213, delivered: 213, ..Tally::default() });

        // Occupant 0 misses message 65 of sender 1 and gets message 3 twice; occupant 2
        // gets a 1:1 message of the bench in the room's stead.
        let mut inboxes: Vec<Inbox> = (0..3).map(|me| Inbox::new(me, Addressee::Room, 3)).collect();
        for inbox in &mut inboxes {
            let me = inbox.me;
            for seq in (0..70).filter(|&s| me != 0 || s != 65) {
                inbox.receive(1, Addressee::Room, seq);
            }
            inbox.receive(2, Addressee::Room, 0);
        }
        assert_eq!(inboxes[0].receive(1, Addressee::Room, 3), Receipt::Duplicate);
        assert_eq!(inboxes[2].receive(1, Addressee::User(2), 0), Receipt::Misrouted);
        let t = tally(&outboxes, &inboxes, &room);
        assert_eq!(t, Tally { expected: 213, delivered: 212, lost: 1, duplicated: 1, misrouted: 1 });
    }
}
