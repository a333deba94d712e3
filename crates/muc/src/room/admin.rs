//! `muc#admin` (XEP-0045 §8 and §9): role changes (kick, voice, moderator) and
//! affiliation changes (ban, membership, admin, owner), and their lists.

use waddle_c2s::stanza;
use waddle_xml::Element;

use super::{normalize_bare, push_error, Actor, AffEntry, Notice, Room, Sender};
use crate::ns;
use crate::{AccessOracle, Affiliation, Outbound, Role};

enum Change {
    Role { nick: String, role: Role, reason: Option<String> },
    Affiliation { bare: String, affiliation: Affiliation, reason: Option<String> },
}

/// A refused request: the stanza error condition and a human-readable text.
type Refusal = (&'static str, &'static str);

impl Room {
    pub(super) fn set_stored_affiliation(&mut self, bare: &str, affiliation: Affiliation, reason: Option<String>) {
        if affiliation == Affiliation::None {
            self.affiliations.remove(bare);
        } else {
            self.affiliations.insert(bare.to_owned(), AffEntry { affiliation, reason });
        }
    }

    pub(super) fn admin_iq(
        &mut self,
        st: &Element,
        query: &Element,
        sender: &Sender,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        let actor = self.actor(sender, oracle);
        let items: Vec<&Element> = query.children().filter(|c| c.is("item", ns::MUC_ADMIN)).collect();
        let Some(first) = items.first() else {
            push_error(out, st, "bad-request", Some("No item"));
            return;
        };
        let result = if st.attr("type") == Some("get") {
            self.admin_list(st, first, &actor).map(|reply| (reply, false))
        } else {
            self.admin_set(st, &items, &actor, out)
        };
        match result {
            Ok((reply, persist)) => {
                out.push(Outbound::Stanza(reply));
                if persist {
                    out.push(Outbound::Persist);
                }
            }
            Err((condition, text)) => push_error(out, st, condition, Some(text)),
        }
    }

    /// Affiliation lists (admins and owners) and role lists (moderators).
    fn admin_list(&self, st: &Element, item: &Element, actor: &Actor) -> Result<Element, Refusal> {
        let mut query = Element::new("query", ns::MUC_ADMIN);
        if let Some(value) = item.attr("affiliation") {
            let affiliation = Affiliation::parse(value)
                .filter(|a| *a != Affiliation::None)
                .ok_or(("bad-request", "Unknown affiliation"))?;
            if !actor.can_view || !actor.affiliation.at_least(Affiliation::Admin) {
                return Err(("forbidden", "Only admins and owners may see affiliation lists"));
            }
            for (jid, entry) in self.affiliations.iter().filter(|(_, e)| e.affiliation == affiliation) {
                let mut item = Element::new("item", ns::MUC_ADMIN)
                    .with_attr("affiliation", affiliation.as_str())
                    .with_attr("jid", jid.as_str());
                if let Some(reason) = &entry.reason {
                    item.append_child(Element::new("reason", ns::MUC_ADMIN).with_text(reason.as_str()));
                }
                query.append_child(item);
            }
        } else if let Some(value) = item.attr("role") {
            let role = Role::parse(value).filter(|r| *r != Role::None).ok_or(("bad-request", "Unknown role"))?;
            if !actor.can_view || !actor.moderator {
                return Err(("forbidden", "Only moderators may see role lists"));
            }
            for occ in self.occupants.values().filter(|o| o.role == role) {
                query.append_child(
                    Element::new("item", ns::MUC_ADMIN)
                        .with_attr("affiliation", occ.affiliation.as_str())
                        .with_attr("role", role.as_str())
                        .with_attr("nick", occ.nick.as_str())
                        .with_attr("jid", occ.real()),
                );
            }
        } else {
            return Err(("bad-request", "An affiliation or a role is required"));
        }
        Ok(stanza::iq_result_with(st, query))
    }

    fn parse_change(&self, item: &Element) -> Result<Change, Refusal> {
        let reason = item.get_child("reason", ns::MUC_ADMIN).map(Element::text);
        match (item.attr("role"), item.attr("affiliation")) {
            (Some(role), None) => {
                let role = Role::parse(role).ok_or(("bad-request", "Unknown role"))?;
                let nick = item.attr("nick").ok_or(("bad-request", "A nickname is required"))?;
                let nick = jid::ResourcePart::new(nick).map_err(|_| ("jid-malformed", "Invalid nickname"))?;
                let nick = nick.as_str();
                if !self.occupants.contains_key(nick) {
                    return Err(("item-not-found", "No such occupant"));
                }
                Ok(Change::Role { nick: nick.to_owned(), role, reason })
            }
            (None, Some(affiliation)) => {
                let affiliation = Affiliation::parse(affiliation).ok_or(("bad-request", "Unknown affiliation"))?;
                let bare = if let Some(j) = item.attr("jid") {
                    waddle_jid::Jid::new(j).map_err(|_| ("jid-malformed", "Invalid JID"))?.to_bare().to_string()
                } else if let Some(nick) = item.attr("nick") {
                    self.occupants.get(nick).map(|o| o.bare.clone()).ok_or(("item-not-found", "No such occupant"))?
                } else {
                    return Err(("bad-request", "A JID or a nickname is required"));
                };
                Ok(Change::Affiliation { bare, affiliation, reason })
            }
            _ => Err(("bad-request", "Exactly one of role and affiliation is required")),
        }
    }

    /// The privilege rules of role changes (XEP-0045 §8): only moderators change roles;
    /// nobody changes the role of an admin or owner; granting or revoking moderator
    /// needs an admin or owner.
    fn check_role_change(&self, actor: &Actor, nick: &str, role: Role) -> Result<(), Refusal> {
        if !actor.can_view || !actor.moderator {
            return Err(("forbidden", "Only moderators may change roles"));
        }
        let Some(target) = self.occupants.get(nick) else {
            return Err(("item-not-found", "No such occupant"));
        };
        if target.affiliation.at_least(Affiliation::Admin) {
            return Err(("not-allowed", "The role of an admin or owner cannot be changed"));
        }
        if (target.role == Role::Moderator || role == Role::Moderator)
            && !actor.affiliation.at_least(Affiliation::Admin)
        {
            return Err(("not-allowed", "Only admins and owners may grant or revoke moderator status"));
        }
        Ok(())
    }

    /// The privilege rules of affiliation changes (XEP-0045 §9, §10): admins manage
    /// outcasts and members; owners manage everything; the last owner stays.
    fn check_affiliation_change(&self, actor: &Actor, bare: &str, affiliation: Affiliation) -> Result<(), Refusal> {
        if actor.channel {
            return Err(("not-allowed", "Channel membership is managed by waddle, not by the room"));
        }
        if !actor.affiliation.at_least(Affiliation::Admin) {
            return Err(("forbidden", "Only admins and owners may change affiliations"));
        }
        let old = self.stored_affiliation(bare);
        if actor.affiliation == Affiliation::Admin
            && (old.at_least(Affiliation::Admin) || affiliation.at_least(Affiliation::Admin))
        {
            return Err(("not-allowed", "Only owners may change admin and owner affiliations"));
        }
        Ok(())
    }

    fn admin_set(
        &mut self,
        st: &Element,
        items: &[&Element],
        actor: &Actor,
        out: &mut Vec<Outbound>,
    ) -> Result<(Element, bool), Refusal> {
        let changes = items.iter().map(|item| self.parse_change(item)).collect::<Result<Vec<_>, _>>()?;
        let mut owners: Vec<String> = self
            .affiliations
            .iter()
            .filter(|(_, e)| e.affiliation == Affiliation::Owner)
            .map(|(j, _)| j.clone())
            .collect();
        let had_owner = !owners.is_empty();
        for change in &changes {
            match change {
                Change::Role { nick, role, .. } => self.check_role_change(actor, nick, *role)?,
                Change::Affiliation { bare, affiliation, .. } => {
                    self.check_affiliation_change(actor, bare, *affiliation)?;
                    owners.retain(|o| o != bare);
                    if *affiliation == Affiliation::Owner {
                        owners.push(bare.clone());
                    }
                }
            }
        }
        if had_owner && owners.is_empty() {
            return Err(("conflict", "The room must keep at least one owner"));
        }
        let mut persist = false;
        for change in changes {
            match change {
                Change::Role { nick, role, reason } => self.apply_role(&nick, role, actor, reason.as_deref(), out),
                Change::Affiliation { bare, affiliation, reason } => {
                    self.apply_affiliation(&bare, affiliation, actor, reason, out);
                    persist = true;
                }
            }
        }
        Ok((stanza::iq_result(st), persist))
    }

    fn apply_role(&mut self, nick: &str, role: Role, actor: &Actor, reason: Option<&str>, out: &mut Vec<Outbound>) {
        let notice_statuses = if role == Role::None { vec![307] } else { Vec::new() };
        let notice = Notice { statuses: notice_statuses, actor: actor.nick.as_deref(), reason, ..Notice::default() };
        if role == Role::None {
            let affiliation = self.occupants.get(nick).map_or(Affiliation::None, |o| o.affiliation);
            self.remove_occupant(nick, affiliation, &notice, out);
            return;
        }
        let Some(occ) = self.occupants.get_mut(nick) else { return };
        if occ.role == role {
            return;
        }
        occ.role = role;
        self.broadcast_presence(nick, &notice, None, out);
    }

    fn apply_affiliation(
        &mut self,
        bare: &str,
        affiliation: Affiliation,
        actor: &Actor,
        reason: Option<String>,
        out: &mut Vec<Outbound>,
    ) {
        let bare = normalize_bare(bare);
        let stored_reason = if affiliation == Affiliation::Outcast { reason.clone() } else { None };
        self.set_stored_affiliation(&bare, affiliation, stored_reason);
        let nicks: Vec<String> = self.occupants.values().filter(|o| o.bare == bare).map(|o| o.nick.clone()).collect();
        for nick in nicks {
            let mut notice = Notice { actor: actor.nick.as_deref(), reason: reason.as_deref(), ..Notice::default() };
            if affiliation == Affiliation::Outcast {
                notice.statuses.push(301);
                self.remove_occupant(&nick, affiliation, &notice, out);
                continue;
            }
            if self.config.members_only && !affiliation.at_least(Affiliation::Member) {
                notice.statuses.push(321);
                self.remove_occupant(&nick, affiliation, &notice, out);
                continue;
            }
            let base = self.default_role(affiliation, None);
            let Some(occ) = self.occupants.get_mut(&nick) else { continue };
            let old = occ.affiliation;
            occ.affiliation = affiliation;
            if affiliation.at_least(Affiliation::Admin) || old.at_least(Affiliation::Admin) {
                occ.role = base;
            } else if occ.role == Role::Visitor && base == Role::Participant {
                occ.role = Role::Participant;
            }
            occ.base_role = base;
            self.broadcast_presence(&nick, &notice, None, out);
        }
    }
}
