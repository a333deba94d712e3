// A scripted @xmpp/client (XMPP over WebSocket, RFC 7395) for the interop suite.
//
//   node --experimental-websocket client.mjs '<json options>'
//
// Options: service (ws:// URL), domain, username, password, mechanism (the SASL
// mechanism to insist on), resource. Node 20 has WebSocket only behind
// --experimental-websocket (it is global from Node 22).
//
// It prints one JSON event per line on stdout ("mechanisms", "online", "message",
// "pong", "state", "error", "offline", "stopped") and takes one JSON command per line
// on stdin: {"cmd":"send","to":..,"body":..}, {"cmd":"ping","to":..},
// {"cmd":"state"}, {"cmd":"stop"}. Every failure is an "error" event and a non-zero
// exit, so the Python side reports it instead of waiting.
import readline from "node:readline";
import { client, xml } from "@xmpp/client";

const NS_STREAM = "http://etherx.jabber.org/streams";
const NS_SM = "urn:xmpp:sm:3";

const options = JSON.parse(process.argv[2] ?? "{}");
const emit = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + "\n");
const fail = (error) => {
  emit("error", { message: String(error?.message ?? error), condition: error?.condition ?? null });
  process.exit(1);
};

let usedMechanism = null;
let smAdvertised = false;
let markOnline;
const online = new Promise((resolve) => (markOnline = resolve));
// Commands run one after another, and only once the session is online.
let queue = online;

const xmpp = client({
  service: options.service,
  domain: options.domain,
  resource: options.resource,
  credentials: async (authenticate, mechanisms) => {
    emit("mechanisms", { mechanisms });
    if (!mechanisms.includes(options.mechanism)) {
      throw new Error(`the server did not offer ${options.mechanism} (offered: ${mechanisms.join(", ")})`);
    }
    usedMechanism = options.mechanism;
    await authenticate({ username: options.username, password: options.password }, options.mechanism);
  },
});
// One connection per run: a reconnect would hide a server that dropped us.
xmpp.reconnect.stop();

const smState = () => ({
  sm_advertised: smAdvertised,
  sm_enabled: xmpp.streamManagement.enabled === true,
  sm_id: xmpp.streamManagement.id || null,
});

xmpp.on("element", (el) => {
  if (el.is("features", NS_STREAM) && el.getChild("sm", NS_SM)) smAdvertised = true;
});
xmpp.on("error", fail);
xmpp.on("offline", () => emit("offline"));
xmpp.on("stanza", (stanza) => {
  if (stanza.is("message") && stanza.getChild("body")) {
    emit("message", {
      from: stanza.attrs.from,
      type: stanza.attrs.type ?? null,
      body: stanza.getChildText("body"),
      xmlns: stanza.attrs.xmlns ?? null,
    });
  }
});
xmpp.on("online", async (address) => {
  try {
    await xmpp.send(xml("presence"));
    emit("online", { jid: address.toString(), mechanism: usedMechanism, ...smState() });
    markOnline();
  } catch (e) {
    fail(e);
  }
});

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  queue = queue.then(() => run(line));
});

async function run(line) {
  try {
    const command = JSON.parse(line);
    switch (command.cmd) {
      case "send":
        await xmpp.send(xml("message", { to: command.to, type: "chat", id: command.id }, xml("body", {}, command.body)));
        emit("sent", { id: command.id ?? null });
        break;
      case "ping": {
        const answer = await xmpp.iqCaller.request(
          xml("iq", { type: "get", to: command.to }, xml("ping", { xmlns: "urn:xmpp:ping" })),
          10_000,
        );
        emit("pong", { type: answer.attrs.type, from: answer.attrs.from ?? null });
        break;
      }
      case "state":
        emit("state", smState());
        break;
      case "stop":
        await xmpp.stop();
        emit("stopped");
        process.exit(0);
        break;
      default:
        throw new Error(`unknown command ${line}`);
    }
  } catch (e) {
    fail(e);
  }
}
commands.on("close", () => queue.then(() => process.exit(0)));

xmpp.start().catch(fail);
