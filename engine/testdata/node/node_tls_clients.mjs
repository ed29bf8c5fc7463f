// ImapFlow and Nodemailer with TLS to the proxy's own listeners, as apps
// with their TLS switch on connect: ImapFlow over implicit TLS reads the
// mailbox's first message, Nodemailer sends over STARTTLS (requireTLS).
// The proxy's certificate is checked against the test's CA. Run by
// TestLocalTLSMailApps; each check throws on a mismatch.
//
// Arguments: IMAPS-HOST:PORT SMTP-STARTTLS-HOST:PORT USER PASSWORD CA.pem
import { readFileSync } from "node:fs";
import { ImapFlow } from "imapflow";
import nodemailer from "nodemailer";
import { check, hostPort } from "./checks.mjs";

const [imapAddr, smtpAddr, user, password, caFile] = process.argv.slice(2);
const ca = readFileSync(caFile);

const [imapHost, imapPort] = hostPort(imapAddr);
const client = new ImapFlow({ host: imapHost, port: imapPort, secure: true, tls: { ca }, auth: { user, pass: password }, logger: false });
await client.connect();
const lock = await client.getMailboxLock("INBOX");
try {
  const first = await client.fetchOne("1", { source: true });
  check("ImapFlow over TLS reads the first message", first.source.toString().includes("hello"), first.source.toString());
} finally {
  lock.release();
}
await client.logout();

const [smtpHost, smtpPort] = hostPort(smtpAddr);
const transport = nodemailer.createTransport({ host: smtpHost, port: smtpPort, secure: false, requireTLS: true, tls: { ca },
  auth: { user, pass: password }, connectionTimeout: 30000 });
const sent = await transport.sendMail({ envelope: { from: user, to: ["nodemailer@example.net"] }, raw: "Subject: Nodemailer over STARTTLS\r\n\r\nsent\r\n" });
check("Nodemailer over STARTTLS sends", sent.accepted.length === 1, sent);
console.log("all checks passed");
