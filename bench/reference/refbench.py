#!/usr/bin/env python3
"""Helpers for scripts/bench-reference.sh (Python standard library only).

  refbench.py tag KEY=VALUE...        stdin: waddle-bench output; prints its JSON line
                                      (the last line starting with '{') with the keys added
  refbench.py http-register ...       creates <prefix><i>@domain over an HTTP API: waddle's
                                      POST /v1/accounts or ejabberd's POST /api/register
  refbench.py preflight ...           one XMPP client: STARTTLS, XEP-0077 registration,
                                      SASL SCRAM, bind, MUC join and a reflected groupchat
  refbench.py compare RESULTS.jsonl   comparison table of waddle, ejabberd and prosody
  refbench.py copy-waddle RESULTS MAM repeats waddle's rows under MAM variant MAM
"""

import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET


# ---------------------------------------------------------------------------- tag


def cmd_tag(args):
    last = None
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("{"):
            last = line
    if last is None:
        print("refbench tag: no JSON line in the generator's output", file=sys.stderr)
        return 1
    record = json.loads(last)
    for pair in args.pairs:
        key, _, value = pair.partition("=")
        record[key] = value
    print(json.dumps(record, sort_keys=True))
    return 0


# ---------------------------------------------------------------- http-register


def cmd_http_register(args):
    def one(i):
        user = f"{args.user_prefix}{i}"
        if args.kind == "waddle":
            url = args.url.rstrip("/") + "/v1/accounts"
            body = {"username": user, "password": args.password}
        else:
            url = args.url.rstrip("/") + "/api/register"
            body = {"user": user, "host": args.domain, "password": args.password}
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
                return "created"
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            # Both APIs answer 409 (waddle) or an error naming the conflict (ejabberd) when
            # the account is already there: that is what a re-run wants.
            if e.code == 409 or "already" in text.lower() or "conflict" in text.lower():
                return "existing"
            return f"HTTP {e.code}: {text[:200]}"
        except OSError as e:
            return f"error: {e}"

    created = existing = 0
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for result in pool.map(one, range(args.users)):
            if result == "created":
                created += 1
            elif result == "existing":
                existing += 1
            else:
                failures.append(result)
    print(f"http-register: {created} created, {existing} already there, {len(failures)} failed")
    for f in failures[:5]:
        print(f"  {f}", file=sys.stderr)
    return 0 if not failures else 1


# ----------------------------------------------------------------- copy-waddle


def cmd_copy_waddle(args):
    """Repeats waddle's results under another MAM variant (for a waddle that cannot turn
    archiving off, which therefore ran once)."""
    with open(args.results) as f:
        rows = [json.loads(line) for line in f if line.startswith("{")]
    with open(args.results, "a") as f:
        for r in rows:
            if r.get("server") == "waddle" and r.get("mam") != args.mam and not r.get("copied_from_mam"):
                f.write(json.dumps(dict(r, copied_from_mam=r.get("mam"), mam=args.mam), sort_keys=True) + "\n")
    return 0


# -------------------------------------------------------------------- preflight

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_REGISTER = "jabber:iq:register"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_XDATA = "jabber:x:data"


class PreflightError(Exception):
    pass


class XmppConn:
    """A deliberately small blocking XMPP client stream for the preflight check."""

    def __init__(self, host, port, domain, timeout):
        self.domain = domain
        self.deadline = time.monotonic() + timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.queue = []
        self.open_stream()

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def open_stream(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.queue = []
        self.send(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
            f"xmlns='jabber:client' xmlns:stream='{NS_STREAM}'>"
        )

    def next(self):
        """Returns the next complete top-level element of the stream."""
        while not self.queue:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise PreflightError("timed out waiting for the server")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise PreflightError("server closed the connection")
            self.parser.feed(data)
            for event, elem in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.queue.append(elem)
        return self.queue.pop(0)

    def expect(self, tag, what):
        elem = self.next()
        if elem.tag != tag:
            raise PreflightError(f"{what}: expected {tag}, got {ET.tostring(elem).decode()[:300]}")
        return elem

    def iq(self, xml, what, iq_id):
        self.send(xml)
        while True:
            elem = self.next()
            if elem.tag == "{jabber:client}iq" and elem.get("id") == iq_id:
                if elem.get("type") != "result":
                    raise PreflightError(f"{what}: {ET.tostring(elem).decode()[:400]}")
                return elem

    def starttls(self):
        features = self.expect(f"{{{NS_STREAM}}}features", "stream features")
        if features.find(f"{{{NS_TLS}}}starttls") is None:
            raise PreflightError("server offers no STARTTLS")
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.expect(f"{{{NS_TLS}}}proceed", "STARTTLS")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.domain)
        self.tls_version = self.sock.version()
        self.open_stream()
        return self.expect(f"{{{NS_STREAM}}}features", "stream features after TLS")


def _scram(conn, mechanism, user, password):
    hash_name = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    initial = base64.b64encode(("n,," + first_bare).encode()).decode()
    conn.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{initial}</auth>")
    challenge = conn.next()
    if challenge.tag != f"{{{NS_SASL}}}challenge":
        raise PreflightError(f"SASL {mechanism}: {ET.tostring(challenge).decode()[:300]}")
    server_first = base64.b64decode(challenge.text or "").decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields["r"].startswith(nonce):
        raise PreflightError("SCRAM: server nonce does not extend ours")
    salt = base64.b64decode(fields["s"])
    iterations = int(fields["i"])
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hash_name).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    final = base64.b64encode(f"{without_proof},p={proof}".encode()).decode()
    conn.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
    outcome = conn.next()
    if outcome.tag != f"{{{NS_SASL}}}success":
        raise PreflightError(f"SASL {mechanism}: {ET.tostring(outcome).decode()[:300]}")
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, hash_name).digest()).decode()
    server_final = base64.b64decode(outcome.text or "").decode()
    if server_final != f"v={expected}":
        raise PreflightError("SCRAM: server signature does not verify")
    return iterations


def cmd_preflight(args):
    report = {"server": args.label, "host": args.host, "port": args.port}
    try:
        # 1. In-band registration (XEP-0077) on a fresh STARTTLS stream.
        conn = XmppConn(args.host, args.port, args.domain, args.timeout)
        features = conn.starttls()
        report["tls"] = conn.tls_version
        if features.find("{http://jabber.org/features/iq-register}register") is None:
            report["register_feature"] = False
        conn.iq(
            f"<iq type='get' id='reg1' to='{args.domain}'><query xmlns='{NS_REGISTER}'/></iq>",
            "registration form",
            "reg1",
        )
        conn.send(
            f"<iq type='set' id='reg2' to='{args.domain}'><query xmlns='{NS_REGISTER}'>"
            f"<username>{args.user}</username><password>{args.password}</password></query></iq>"
        )
        while True:
            elem = conn.next()
            if elem.tag == "{jabber:client}iq" and elem.get("id") == "reg2":
                break
        if elem.get("type") == "result":
            report["registered"] = "created"
        elif elem.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}conflict") is not None:
            report["registered"] = "existing"
        else:
            raise PreflightError(f"registration: {ET.tostring(elem).decode()[:400]}")
        conn.sock.close()

        # 2. SCRAM login, bind, MUC join, groupchat reflected back.
        conn = XmppConn(args.host, args.port, args.domain, args.timeout)
        features = conn.starttls()
        mechs = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        report["mechanisms"] = mechs
        if args.mechanism not in mechs:
            raise PreflightError(f"{args.mechanism} not offered (offered: {', '.join(mechs)})")
        report["scram_iterations"] = _scram(conn, args.mechanism, args.user, args.password)
        report["mechanism"] = args.mechanism
        conn.open_stream()
        conn.expect(f"{{{NS_STREAM}}}features", "stream features after SASL")
        bound = conn.iq(
            f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>preflight</resource></bind></iq>",
            "bind",
            "bind1",
        )
        report["jid"] = bound.findtext(f".//{{{NS_BIND}}}jid")
        conn.send("<presence/>")
        room = f"{args.room}@{args.muc_domain}"
        conn.send(
            f"<presence to='{room}/{args.user}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
        )
        codes = set()
        while True:
            elem = conn.next()
            if elem.tag != "{jabber:client}presence" or not (elem.get("from") or "").startswith(room + "/"):
                continue
            if elem.get("type") == "error":
                raise PreflightError(f"MUC join: {ET.tostring(elem).decode()[:400]}")
            for status in elem.iter(f"{{{NS_MUC_USER}}}status"):
                codes.add(status.get("code"))
            if "110" in codes:
                break
        report["muc_join_status"] = sorted(c for c in codes if c)
        if "201" in codes:
            # A new room is locked until its owner accepts the default configuration.
            conn.iq(
                f"<iq type='set' id='own1' to='{room}'><query xmlns='{NS_MUC_OWNER}'>"
                f"<x xmlns='{NS_XDATA}' type='submit'/></query></iq>",
                "instant room",
                "own1",
            )
        conn.send(f"<message to='{room}' type='groupchat' id='gc1'><body>preflight</body></message>")
        while True:
            elem = conn.next()
            if elem.tag == "{jabber:client}message" and elem.get("id") == "gc1":
                if elem.get("type") == "error":
                    raise PreflightError(f"groupchat: {ET.tostring(elem).decode()[:400]}")
                break
        report["muc_reflected"] = True
        conn.send("</stream:stream>")
        conn.sock.close()
        report["ok"] = True
    except (PreflightError, OSError, ET.ParseError, KeyError, ValueError) as e:
        report["ok"] = False
        report["error"] = str(e)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


# ---------------------------------------------------------------------- compare

# (metric, how to read it from a record, True if higher is better)
METRICS = {
    "login": [
        ("logins_per_s", lambda r: r.get("logins_per_s"), True),
        ("server_cpu_us_per_login", lambda r: r.get("server_cpu_us_per_delivery"), False),
        ("lat_p99_us", lambda r: (r.get("lat_us") or {}).get("p99"), False),
    ],
    "idle": [
        ("idle_rss_kib_per_session", lambda r: r.get("idle_rss_kib_per_session"), False),
    ],
}
DELIVERY_METRICS = [
    ("delivered_per_s", lambda r: r.get("delivered_per_s"), True),
    ("server_cpu_us_per_delivery", lambda r: r.get("server_cpu_us_per_delivery"), False),
    ("lat_p50_us", lambda r: (r.get("lat_us") or {}).get("p50"), False),
    ("lat_p99_us", lambda r: (r.get("lat_us") or {}).get("p99"), False),
    ("lat_p999_us", lambda r: (r.get("lat_us") or {}).get("p999"), False),
    ("undelivered", lambda r: r.get("undelivered"), False),
    ("duplicated", lambda r: r.get("duplicated"), False),
    ("misrouted", lambda r: r.get("misrouted"), False),
    ("errors", lambda r: r.get("errors"), False),
]


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cmd_compare(args):
    records = []
    with open(args.results) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                records.append(json.loads(line))
    if not records:
        print("no results")
        return 1
    servers = ["waddle", "ejabberd", "prosody"]
    others = [s for s in servers if s != "waddle"]
    # Latest record wins for each (mam, scenario, server).
    table = {}
    order = []
    for r in records:
        key = (r.get("mam", "?"), r.get("ref_scenario", r.get("scenario", "?")))
        if key not in table:
            table[key] = {}
            order.append(key)
        table[key][r.get("server", r.get("label", "?"))] = r

    head = f"{'scenario':<12} {'metric':<28}" + "".join(f"{s:>14}" for s in servers)
    head += "".join(f"{'vs ' + s:>13}" for s in others)
    print("Ratios: >1 means waddle did better (x/waddle for costs and latencies, waddle/x for rates).")
    for mam in sorted({k[0] for k in order}):
        print()
        always = any(
            r.get("server") == "waddle" and (r.get("copied_from_mam") or r.get("waddle_mam_switch") == "no")
            for k, rows in table.items()
            if k[0] == mam
            for r in rows.values()
        )
        note = "   (this waddle has no archive switch: its numbers include MAM)" if mam == "off" and always else ""
        dbs = sorted(
            {r.get("ejabberd_db") for k, rows in table.items() if k[0] == mam for r in rows.values()} - {None}
        )
        if dbs:
            note += f"   (ejabberd db: {', '.join(dbs)})"
        print(f"MAM={mam}{note}")
        print(head)
        print("-" * len(head))
        for key in order:
            if key[0] != mam:
                continue
            scenario = key[1]
            rows = table[key]
            kind = scenario.split("-")[0]
            for name, get, higher_better in METRICS.get(kind, DELIVERY_METRICS):
                vals = {s: (get(rows[s]) if s in rows else None) for s in servers}
                line = f"{scenario:<12} {name:<28}" + "".join(f"{_fmt(vals[s]):>14}" for s in servers)
                w = _num(vals["waddle"])
                for s in others:
                    x = _num(vals[s])
                    ratio = None
                    if w is not None and x is not None and w > 0 and x > 0:
                        ratio = (w / x) if higher_better else (x / w)
                    line += f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>13}"
                print(line)
            auths = {s: rows[s].get("auth") for s in servers if s in rows and rows[s].get("auth")}
            if kind == "login" and auths:
                print(f"{'':<12} {'auth':<28}" + "".join(f"{auths.get(s, '-'):>14}" for s in servers))
    return 0


# ------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("tag")
    t.add_argument("pairs", nargs="*")

    h = sub.add_parser("http-register")
    h.add_argument("--kind", choices=["waddle", "ejabberd"], required=True)
    h.add_argument("--url", required=True)
    h.add_argument("--domain", default="localhost")
    h.add_argument("--users", type=int, required=True)
    h.add_argument("--user-prefix", default="bench")
    h.add_argument("--password", default="benchpass")
    h.add_argument("--concurrency", type=int, default=8)

    f = sub.add_parser("preflight")
    f.add_argument("--label", default="server")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--domain", default="localhost")
    f.add_argument("--muc-domain", default="muc.localhost")
    f.add_argument("--user", default="benchpreflight")
    f.add_argument("--password", default="benchpass")
    f.add_argument("--room", default="benchpreflight")
    f.add_argument("--mechanism", default="SCRAM-SHA-256")
    f.add_argument("--timeout", type=float, default=20.0)

    c = sub.add_parser("compare")
    c.add_argument("results")

    w = sub.add_parser("copy-waddle")
    w.add_argument("results")
    w.add_argument("mam")

    args = p.parse_args()
    commands = {
        "tag": cmd_tag,
        "http-register": cmd_http_register,
        "preflight": cmd_preflight,
        "compare": cmd_compare,
        "copy-waddle": cmd_copy_waddle,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
