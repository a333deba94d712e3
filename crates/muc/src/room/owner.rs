//! IQ dispatch, service discovery (XEP-0045 §6) and `muc#owner` (XEP-0045 §10):
//! configuration form, instant rooms, cancellation and destruction.

use waddle_c2s::stanza;
use waddle_xml::Element;

use super::{push_error, Notice, Room, Sender};
use crate::form::{self, FormError};
use crate::ns;
use crate::{AccessOracle, Affiliation, ChannelSettings, Outbound, Policy, Role, RoomConfig, Whois};

fn feature(var: &str) -> Element {
    Element::new("feature", ns::DISCO_INFO).with_attr("var", var)
}

impl Room {
    pub(super) fn on_iq(
        &mut self,
        st: &Element,
        sender: &Sender,
        nick: Option<&str>,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        let get = match st.attr("type") {
            Some("get") => true,
            Some("set") => false,
            _ => return,
        };
        let Some(payload) = stanza::iq_payload(st) else {
            push_error(out, st, "bad-request", Some("An IQ carries exactly one payload"));
            return;
        };
        if let Some(nick) = nick {
            self.occupant_iq(st, payload, sender, nick, out);
            return;
        }
        match (get, payload.ns(), payload.name()) {
            (true, ns::DISCO_INFO, "query") => self.disco_info(st, payload, sender, oracle, out),
            (true, ns::DISCO_ITEMS, "query") => self.disco_items(st, payload, out),
            (true, ns::PING, "ping") => out.push(Outbound::Stanza(stanza::iq_result(st))),
            (_, ns::MUC_ADMIN, "query") => self.admin_iq(st, payload, sender, oracle, out),
            (_, ns::MUC_OWNER, "query") => self.owner_iq(st, payload, sender, oracle, out),
            _ => push_error(out, st, "service-unavailable", None),
        }
    }

    /// IQs to an occupant JID: XEP-0410 self-ping is answered by the room; others are
    /// not relayed.
    fn occupant_iq(&self, st: &Element, payload: &Element, sender: &Sender, nick: &str, out: &mut Vec<Outbound>) {
        if !(payload.is("ping", ns::PING) && st.attr("type") == Some("get")) {
            push_error(out, st, "service-unavailable", None);
        } else if !self.sessions.contains_key(&sender.full) {
            push_error(out, st, "not-acceptable", Some("You are not in this room"));
        } else if !self.occupants.contains_key(nick) {
            push_error(out, st, "item-not-found", Some("No such occupant"));
        } else {
            out.push(Outbound::Stanza(stanza::iq_result(st)));
        }
    }

    fn disco_info(
        &self,
        st: &Element,
        query: &Element,
        sender: &Sender,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        if query.attr("node").is_some() {
            push_error(out, st, "item-not-found", None);
            return;
        }
        if matches!(oracle.access(&sender.bare), Policy::Channel(a) if !a.can_view) {
            push_error(out, st, "forbidden", None);
            return;
        }
        let c = &self.config;
        let name = if c.name.is_empty() { self.jid.split('@').next().unwrap_or(&self.jid) } else { c.name.as_str() };
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", name),
        );
        let pick = |cond: bool, yes: &'static str, no: &'static str| if cond { yes } else { no };
        let features = [
            ns::DISCO_INFO,
            ns::MUC,
            pick(c.persistent, "muc_persistent", "muc_temporary"),
            pick(c.members_only, "muc_membersonly", "muc_open"),
            pick(c.moderated, "muc_moderated", "muc_unmoderated"),
            pick(c.password_required().is_some(), "muc_passwordprotected", "muc_unsecured"),
            pick(c.public, "muc_public", "muc_hidden"),
            pick(c.whois == Whois::Anyone, "muc_nonanonymous", "muc_semianonymous"),
            ns::SID,
            ns::RETRACT,
        ];
        for f in features {
            q.append_child(feature(f));
        }
        if c.logged {
            q.append_child(feature(ns::MAM));
        }
        q.append_child(form::roominfo_form(c, self.occupants.len(), &self.subject.text));
        out.push(Outbound::Stanza(stanza::iq_result_with(st, q)));
    }

    /// Occupants as items only where anyone may see who is there (public,
    /// non-anonymous rooms); otherwise an empty list (XEP-0045 §6.5).
    fn disco_items(&self, st: &Element, query: &Element, out: &mut Vec<Outbound>) {
        if query.attr("node").is_some() {
            push_error(out, st, "item-not-found", None);
            return;
        }
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        if self.config.public && self.config.whois == Whois::Anyone {
            for nick in self.occupants.keys() {
                q.append_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", self.occupant_jid(nick))
                        .with_attr("name", nick.as_str()),
                );
            }
        }
        out.push(Outbound::Stanza(stanza::iq_result_with(st, q)));
    }

    fn owner_iq(
        &mut self,
        st: &Element,
        query: &Element,
        sender: &Sender,
        oracle: &dyn AccessOracle,
        out: &mut Vec<Outbound>,
    ) {
        let actor = self.actor(sender, oracle);
        if !actor.can_view || actor.affiliation != Affiliation::Owner {
            push_error(out, st, "forbidden", Some("Only owners may configure the room"));
            return;
        }
        if st.attr("type") == Some("get") {
            let q = Element::new("query", ns::MUC_OWNER).with_child(form::config_form(&self.config));
            out.push(Outbound::Stanza(stanza::iq_result_with(st, q)));
            return;
        }
        if let Some(x) = query.get_child("x", ns::DATA_FORMS) {
            match x.attr("type") {
                Some("submit") => self.submit_config(st, x, oracle, out),
                Some("cancel") if self.locked => {
                    // The creator gave up on the initial configuration: the room goes away.
                    let mut gone = self.destroy(None, None);
                    let last = gone.pop();
                    out.append(&mut gone);
                    out.push(Outbound::Stanza(stanza::iq_result(st)));
                    out.extend(last);
                }
                Some("cancel") => out.push(Outbound::Stanza(stanza::iq_result(st))),
                _ => push_error(out, st, "bad-request", Some("Expected a submitted or cancelled form")),
            }
        } else if let Some(destroy) = query.get_child("destroy", ns::MUC_OWNER) {
            if actor.channel {
                push_error(out, st, "not-allowed", Some("Channels are deleted through waddle, not by the room"));
                return;
            }
            let reason = destroy.get_child("reason", ns::MUC_OWNER).map(Element::text);
            let mut gone = self.destroy(reason.as_deref(), destroy.attr("jid"));
            let last = gone.pop();
            out.append(&mut gone);
            out.push(Outbound::Stanza(stanza::iq_result(st)));
            out.extend(last);
        } else {
            push_error(out, st, "bad-request", None);
        }
    }

    /// A submitted configuration form (an empty one accepts the instant room). Unlocks
    /// the room; occupants are told of changes with status 104 (and 170/171, 172/173);
    /// turning members-only on removes non-members (status 322).
    fn submit_config(&mut self, st: &Element, x: &Element, oracle: &dyn AccessOracle, out: &mut Vec<Outbound>) {
        let config = match form::apply_config_form(&self.config, x) {
            Ok(config) => config,
            Err(FormError(condition)) => {
                push_error(out, st, condition, Some("Invalid room configuration"));
                return;
            }
        };
        let old = std::mem::replace(&mut self.config, config);
        let was_locked = self.locked;
        self.locked = false;
        self.trim_history();
        if !was_locked {
            self.announce_config_change(&old, out);
        }
        if self.config.moderated != old.moderated {
            // Occupants keep their current roles; what the rules would now give on entry
            // becomes the base a later policy re-evaluation compares against.
            let bases: Vec<(String, Role)> = self
                .occupants
                .values()
                .map(|o| {
                    let policy = oracle.access(&o.bare);
                    let (aff, channel) = self.effective(&o.bare, &policy);
                    (o.nick.clone(), self.default_role(aff, channel))
                })
                .collect();
            for (nick, base) in bases {
                if let Some(o) = self.occupants.get_mut(&nick) {
                    o.base_role = base;
                }
            }
        }
        if self.config.members_only && !old.members_only {
            let outsiders: Vec<(String, Affiliation)> = self
                .occupants
                .values()
                .filter(|o| !o.affiliation.at_least(Affiliation::Member))
                .filter(|o| oracle.access(&o.bare) == Policy::Standard)
                .map(|o| (o.nick.clone(), o.affiliation))
                .collect();
            for (nick, affiliation) in outsiders {
                self.remove_occupant(&nick, affiliation, &Notice { statuses: vec![322], ..Notice::default() }, out);
            }
        }
        out.push(Outbound::Stanza(stanza::iq_result(st)));
        out.push(Outbound::Persist);
        if !self.config.persistent && self.occupants.is_empty() && !self.destroyed {
            self.destroyed = true;
            self.history.clear();
            out.push(Outbound::Destroyed);
        }
    }
    /// Tells every occupant the configuration changed (status 104, plus 170/171 for
    /// logging and 172/173 for anonymity), if it did.
    fn announce_config_change(&self, old: &RoomConfig, out: &mut Vec<Outbound>) {
        if *old == self.config {
            return;
        }
        let mut codes = vec![104];
        if old.logged != self.config.logged {
            codes.push(if self.config.logged { 170 } else { 171 });
        }
        if old.whois != self.config.whois {
            codes.push(if self.config.whois == Whois::Anyone { 172 } else { 173 });
        }
        for (_, session) in self.receivers() {
            let mut x = Element::new("x", ns::MUC_USER);
            for code in &codes {
                x.append_child(super::status(*code));
            }
            out.push(Outbound::Stanza(
                Element::new("message", ns::CLIENT)
                    .with_attr("type", "groupchat")
                    .with_attr("from", self.jid.as_str())
                    .with_attr("to", session.full.as_str())
                    .with_child(x),
            ));
        }
    }

    /// The waddle channel behind this room changed (name, topic or kind): the room takes
    /// the new name, description and moderation, tells its occupants (status 104) and
    /// re-evaluates their roles against `oracle`, which already answers for the new kind
    /// (in an announcement channel plain members become visitors).
    pub fn apply_channel_settings(&mut self, settings: &ChannelSettings, oracle: &dyn AccessOracle) -> Vec<Outbound> {
        let mut out = Vec::new();
        if self.destroyed {
            return out;
        }
        let mut config = self.config.clone();
        config.name.clone_from(&settings.name);
        config.description.clone_from(&settings.description);
        config.moderated = settings.moderated;
        if config == self.config {
            return out;
        }
        let old = std::mem::replace(&mut self.config, config);
        self.announce_config_change(&old, &mut out);
        out.extend(self.apply_policy_change(oracle));
        out.push(Outbound::Persist);
        out
    }
}
