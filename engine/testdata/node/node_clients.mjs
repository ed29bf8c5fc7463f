// Node.js mail libraries, as Node business apps and automation tools (n8n's
// IMAP trigger and e-mail nodes among them) read and send with: ImapFlow and
// node-imap (the "imap" package) read over IMAP, Nodemailer sends. Run by
// TestDovecotNodeClients through the proxy; each check throws on a
// mismatch. Nothing here is ours but the script.
//
// Arguments: IMAP-HOST:PORT SMTP-HOST:PORT USER PASSWORD
import { ImapFlow } from "imapflow";
import Imap from "imap";
import nodemailer from "nodemailer";
import { check, hostPort } from "./checks.mjs";

const [imapAddr, smtpAddr, user, password] = process.argv.slice(2);

const [imapHost, imapPort] = hostPort(imapAddr);
const [smtpHost, smtpPort] = hostPort(smtpAddr);
const subject = `node ${process.hrtime.bigint()}`;
const message = Buffer.from(`From: ${user}\r\nSubject: ${subject}\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nna\u00efve\r\n`, "utf8");

// ImapFlow: append, find, read back; a wrong password refused.
const flow = () => ({ host: imapHost, port: imapPort, secure: false, logger: false });
const client = new ImapFlow({ ...flow(), auth: { user, pass: password } });
await client.connect();
await client.append("INBOX", message);
const lock = await client.getMailboxLock("INBOX");
let uid;
try {
  const uids = await client.search({ header: { subject } }, { uid: true });
  check("ImapFlow search finds the message appended", uids.length === 1, uids);
  uid = uids[0];
  const got = await client.fetchOne(String(uid), { source: true }, { uid: true });
  check("ImapFlow message as appended", Buffer.compare(got.source, message) === 0, got.source.toString());
} finally {
  lock.release();
}
await client.logout();

const wrong = new ImapFlow({ ...flow(), auth: { user, pass: password + "-wrong" } });
wrong.on("error", () => {});
try {
  await wrong.connect();
  check("ImapFlow with a wrong password is refused", false, "logged in");
} catch (err) {
  check("ImapFlow with a wrong password is refused", err.authenticationFailed === true, String(err));
}

// node-imap: the message again, by UID.
const body = await new Promise((resolve, reject) => {
  const imap = new Imap({ user, password, host: imapHost, port: imapPort, tls: false, authTimeout: 30000 });
  imap.once("error", reject);
  imap.once("ready", () => {
    imap.openBox("INBOX", true, (err) => {
      if (err) return reject(err);
      const f = imap.fetch(String(uid), { bodies: "" });
      const parts = [];
      f.on("message", (msg) => msg.on("body", (stream) => stream.on("data", (d) => parts.push(d))));
      f.once("error", reject);
      f.once("end", () => {
        imap.end();
        resolve(Buffer.concat(parts));
      });
    });
  });
  imap.connect();
});
check("node-imap message as appended", Buffer.compare(body, message) === 0, body.toString());

// Nodemailer: a message sent; a wrong password refused.
const transport = (pass) =>
  nodemailer.createTransport({ host: smtpHost, port: smtpPort, secure: false, auth: { user, pass }, connectionTimeout: 30000 });
const sent = await transport(password).sendMail({
  envelope: { from: user, to: ["nodemailer@example.net"] },
  raw: `From: ${user}\r\nSubject: sent by nodemailer\r\n\r\nsent\r\n.dot line\r\n`,
});
check("Nodemailer sends", sent.accepted.length === 1, sent);
try {
  await transport(password + "-wrong").sendMail({ envelope: { from: user, to: ["wrong@example.net"] }, raw: "Subject: x\r\n\r\nx\r\n" });
  check("Nodemailer with a wrong password is refused", false, "sent");
} catch (err) {
  check("Nodemailer with a wrong password is refused", err.code === "EAUTH" && err.responseCode === 535, String(err));
}
console.log("all checks passed");
