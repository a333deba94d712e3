//! Messages: groupchat reflection and archiving, subject changes, retractions, private
//! messages, mediated invitations and declines, bounced messages.

use waddle_xml::Element;

use super::{normalize_bare, push_error, retain_children, Room, Sender, Subject};
use crate::ns;
use crate::{AccessOracle, Affiliation, HistoryEntry, Outbound, Policy, Role};

/// Error conditions of a bounced message that mean the occupant's session is gone.
const GONE_CONDITIONS: &[&str] = &[
    "gone",
    "item-not-found",
    "recipient-unavailable",
    "redirect",
    "remote-server-not-found",
    "remote-server-timeout",
    "service-unavailable",
];

/// Does a groupchat message belong in the history and archive? Not when it only carries
/// transient payloads (chat states, markers, receipts) or asks not to be stored
/// (XEP-0334).
fn archivable(msg: &Element) -> bool {
    if msg.children().any(|c| c.ns() == ns::HINTS && matches!(c.name(), "no-store" | "no-permanent-store")) {
        return false;
    }
    if msg.has_child("store", ns::HINTS) {
        return true;
    }
    msg.children().any(|c| {
        !(matches!(c.ns(), ns::CHATSTATES | ns::CHAT_MARKERS | ns::RECEIPTS | ns::HINTS | ns::SID | ns::MUC_USER)
            || c.is("thread", ns::CLIENT))
    })
}

fn bare_of(full: &str) -> String {
    waddle_jid::Jid::new(full).map(|j| j.to_bare().to_string()).unwrap_or_else(|_| full.to_owned())
}

/// Is the sender forbidden from speaking by the channel policy?
fn channel_denies_sending(oracle: &dyn AccessOracle, bare: &str) -> bool {
    matches!(oracle.access(bare), Policy::Channel(a) if !a.can_view || !a.can_send)
}

impl Room {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_message(
        &mut self,
        st: &Element,
        sender: &Sender,
        nick: Option<&str>,
        oracle: &dyn AccessOracle,
        now: &str,
        new_stanza_id: &mut dyn FnMut() -> String,
        out: &mut Vec<Outbound>,
    ) {
        match (nick, st.attr("type").unwrap_or("normal")) {
            (_, "error") => self.message_error(st, sender, out),
            (None, "groupchat") => self.groupchat(st, sender, oracle, now, new_stanza_id, out),
            (Some(_), "groupchat") => {
                push_error(out, st, "bad-request", Some("Groupchat messages must be sent to the room"));
            }
            (Some(target), _) => self.private_message(st, sender, target, oracle, out),
            (None, _) => self.room_message(st, sender, oracle, out),
        }
    }

    /// A message bounced by an occupant's server: the session is gone (status 333).
    fn message_error(&mut self, st: &Element, sender: &Sender, out: &mut Vec<Outbound>) {
        let condition = st
            .get_child("error", ns::CLIENT)
            .and_then(|e| e.children().find(|c| c.ns() == ns::STANZA_ERRORS && c.name() != "text"))
            .map(Element::name);
        if condition.is_some_and(|c| GONE_CONDITIONS.contains(&c)) {
            self.remove_session(&sender.full, &[], false, &[333], out);
        }
    }

    /// Groupchat (XEP-0045 §7.4): reflected to every occupant session (the sender's
    /// included) from the sender's occupant JID, with the room's XEP-0359 stanza id;
    /// then archived once.
    fn groupchat(
        &mut self,
        st: &Element,
        sender: &Sender,
        oracle: &dyn AccessOracle,
        now: &str,
        new_stanza_id: &mut dyn FnMut() -> String,
        out: &mut Vec<Outbound>,
    ) {
        let Some(nick) = self.sessions.get(&sender.full).cloned() else {
            push_error(out, st, "not-acceptable", Some("Only occupants may send messages to the room"));
            return;
        };
        if channel_denies_sending(oracle, &sender.bare) {
            push_error(out, st, "forbidden", Some("You may not send messages to this channel"));
            return;
        }
        let Some(role) = self.occupants.get(&nick).map(|o| o.role) else { return };
        if st.has_child("subject", ns::CLIENT) && !st.has_child("body", ns::CLIENT) {
            self.change_subject(st, &nick, role, out);
            return;
        }
        if role == Role::Visitor {
            push_error(out, st, "forbidden", Some("Visitors may not speak in this room"));
            return;
        }
        let retracted = st.get_child("retract", ns::RETRACT).and_then(|r| r.attr("id")).map(str::to_owned);
        if let Some(id) = &retracted {
            // Authorship can only be checked against the in-memory history; beyond it
            // only moderators may retract (the archive tombstones what we let through).
            let pos = self.history.iter().position(|e| e.stanza_id == *id);
            let author = pos.and_then(|p| self.history.get(p)).is_some_and(|e| bare_of(&e.from_real) == sender.bare);
            if !author && role != Role::Moderator {
                push_error(out, st, "forbidden", Some("You may only retract your own recent messages"));
                return;
            }
            if let Some(pos) = pos {
                self.history.remove(pos);
            }
        }
        let mut msg = st.clone();
        msg.remove_attr("to");
        msg.set_attr("from", self.occupant_jid(&nick));
        let room = self.jid.clone();
        retain_children(&mut msg, |c| {
            !(c.is("stanza-id", ns::SID) && c.attr("by").is_some_and(|by| normalize_bare(by) == room))
        });
        let stored = archivable(&msg);
        let stanza_id = if stored { new_stanza_id() } else { String::new() };
        if stored {
            msg.append_child(
                Element::new("stanza-id", ns::SID).with_attr("id", stanza_id.as_str()).with_attr("by", room),
            );
        }
        let to = self.receivers().map(|(_, session)| session.full.clone()).collect();
        if !stored {
            out.push(Outbound::Broadcast { stanza: msg, to });
            return;
        }
        out.push(Outbound::Broadcast { stanza: msg.clone(), to });
        let entry = HistoryEntry {
            stanza_id,
            from_nick: nick,
            from_real: sender.full.clone(),
            message: msg,
            stamp: now.to_owned(),
        };
        if self.config.logged {
            out.push(Outbound::Archive(entry.clone()));
        }
        if retracted.is_none() && self.config.history_max > 0 {
            self.history.push_back(entry);
            self.trim_history();
        }
    }

    /// Subject change (XEP-0045 §8.1): moderators always, participants if the room
    /// allows it.
    fn change_subject(&mut self, st: &Element, nick: &str, role: Role, out: &mut Vec<Outbound>) {
        let allowed = role == Role::Moderator || (role == Role::Participant && self.config.change_subject);
        if !allowed {
            push_error(out, st, "forbidden", Some("You may not change the subject of this room"));
            return;
        }
        let text = st.get_child("subject", ns::CLIENT).map(Element::text).unwrap_or_default();
        self.subject = Subject { text, nick: nick.to_owned() };
        let mut msg = st.clone();
        msg.remove_attr("to");
        msg.set_attr("from", self.occupant_jid(nick));
        for (_, session) in self.receivers() {
            let mut copy = msg.clone();
            copy.set_attr("to", session.full.as_str());
            out.push(Outbound::Stanza(copy));
        }
        out.push(Outbound::Persist);
    }

    /// Private message (XEP-0045 §7.5) to every session of the addressed occupant.
    fn private_message(
        &mut self,
        st: &Element,
        sender: &Sender,
        target: &str,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        let Some(from_nick) = self.sessions.get(&sender.full) else {
            push_error(out, st, "not-acceptable", Some("Only occupants may send private messages"));
            return;
        };
        if channel_denies_sending(oracle, &sender.bare) {
            push_error(out, st, "forbidden", Some("You may not send messages in this channel"));
            return;
        }
        let Some(occ) = self.occupants.get(target) else {
            push_error(out, st, "item-not-found", Some("No such occupant"));
            return;
        };
        let mut msg = st.clone();
        msg.set_attr("from", self.occupant_jid(from_nick));
        if !msg.has_child("x", ns::MUC_USER) {
            msg.append_child(Element::new("x", ns::MUC_USER));
        }
        for session in &occ.sessions {
            let mut copy = msg.clone();
            copy.set_attr("to", session.full.as_str());
            out.push(Outbound::Stanza(copy));
        }
    }

    /// A non-groupchat message to the room itself: mediated invitations and declines.
    fn room_message(&mut self, st: &Element, sender: &Sender, oracle: &dyn AccessOracle, out: &mut Vec<Outbound>) {
        let Some(x) = st.get_child("x", ns::MUC_USER) else {
            if st.has_child("body", ns::CLIENT) {
                push_error(out, st, "bad-request", Some("Messages to the room must be of type groupchat"));
            }
            return;
        };
        if x.has_child("invite", ns::MUC_USER) {
            self.invite(st, x, sender, oracle, out);
        } else if let Some(decline) = x.get_child("decline", ns::MUC_USER) {
            self.decline(st, decline, sender, out);
        }
    }

    /// Mediated invitation (XEP-0045 §7.8.2). Occupants may invite when the room allows
    /// invitations; admins and owners always. An admin's invitation to a members-only
    /// room makes the invitee a member.
    fn invite(
        &mut self,
        st: &Element,
        x: &Element,
        sender: &Sender,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        let actor = self.actor(sender, oracle);
        if actor.nick.is_none() {
            push_error(out, st, "not-acceptable", Some("Only occupants may invite"));
            return;
        }
        if !actor.can_view || (!self.config.allow_invites && !actor.affiliation.at_least(Affiliation::Admin)) {
            push_error(out, st, "forbidden", Some("You may not invite to this room"));
            return;
        }
        let mut invites = Vec::new();
        for invite in x.children().filter(|c| c.is("invite", ns::MUC_USER)) {
            let Some(to) = invite.attr("to").and_then(|t| waddle_jid::Jid::new(t).ok()) else {
                push_error(out, st, "jid-malformed", Some("Invalid invitee address"));
                return;
            };
            let reason = invite.get_child("reason", ns::MUC_USER).map(Element::text);
            invites.push((to, reason));
        }
        let add_members = !actor.channel && self.config.members_only && actor.affiliation.at_least(Affiliation::Admin);
        let mut changed = false;
        for (to, reason) in invites {
            let mut inv = Element::new("invite", ns::MUC_USER).with_attr("from", sender.bare.as_str());
            let mut body = format!("{} invites you to the room {}", sender.bare, self.jid);
            if let Some(reason) = &reason {
                inv.append_child(Element::new("reason", ns::MUC_USER).with_text(reason.as_str()));
                if !reason.is_empty() {
                    body.push_str(": ");
                    body.push_str(reason);
                }
            }
            let mut x = Element::new("x", ns::MUC_USER).with_child(inv);
            if let Some(password) = self.config.password_required() {
                x.append_child(Element::new("password", ns::MUC_USER).with_text(password));
            }
            let mut msg = Element::new("message", ns::CLIENT)
                .with_attr("from", self.jid.as_str())
                .with_attr("to", to.as_str())
                .with_child(x)
                .with_child(Element::new("body", ns::CLIENT).with_text(body));
            if let Some(id) = st.attr("id") {
                msg.set_attr("id", id);
            }
            out.push(Outbound::Stanza(msg));
            let invitee = to.to_bare().to_string();
            if add_members && self.stored_affiliation(&invitee) == Affiliation::None {
                self.set_stored_affiliation(&invitee, Affiliation::Member, None);
                changed = true;
            }
        }
        if changed {
            out.push(Outbound::Persist);
        }
    }

    /// A declined invitation (XEP-0045 §7.8.2), relayed to the inviter.
    fn decline(&self, st: &Element, decline: &Element, sender: &Sender, out: &mut Vec<Outbound>) {
        let Some(to) = decline.attr("to").and_then(|t| waddle_jid::Jid::new(t).ok()) else {
            push_error(out, st, "jid-malformed", Some("Invalid inviter address"));
            return;
        };
        let mut d = Element::new("decline", ns::MUC_USER).with_attr("from", sender.bare.as_str());
        if let Some(reason) = decline.get_child("reason", ns::MUC_USER) {
            d.append_child(reason.clone());
        }
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", self.jid.as_str())
            .with_attr("to", to.as_str())
            .with_child(Element::new("x", ns::MUC_USER).with_child(d));
        out.push(Outbound::Stanza(msg));
    }
}
