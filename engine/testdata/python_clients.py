"""Python's own mail clients (imaplib, poplib, smtplib) through the proxy.

Run by TestDovecotPythonClients with the proxy's addresses and the account;
every check raises on a mismatch, so the exit status says whether all held.
Nothing here is ours but the script: the clients are the standard library's,
as the legacy apps behind the proxy often are.
"""
import email.message
import imaplib
import poplib
import smtplib
import sys

imap_addr, pop_addr, smtp_starttls_addr, smtp_tls_addr, user, password = sys.argv[1:7]


def hostport(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def check(what, cond, got):
    if not cond:
        raise SystemExit("%s: got %r" % (what, got))
    print("ok  ", what)


small = (b"From: " + user.encode() + b"\r\nSubject: small\r\n\r\n"
         b".leading dot\r\n..two dots\r\n.\r\nna\xc3\xafve\r\n")
big = (b"From: " + user.encode() + b"\r\nSubject: big\r\n\r\n" +
       b"".join(b"%06d " % i + b"x" * 90 + b"\r\n" for i in range(20000)))

# IMAP: the proxy answers before login; after it, Dovecot does.
# (The first password that logs in becomes the account's; the wrong
# passwords below come after it, four in all: under the five an address
# may get wrong before it is slowed down.)
m = imaplib.IMAP4(*hostport(imap_addr))
typ, caps = m.capability()
check("IMAP capability before login offers AUTH=PLAIN", typ == "OK" and b"AUTH=PLAIN" in caps[0], caps)
typ, data = m.login(user, password)
check("IMAP login", typ == "OK", data)
wrong = imaplib.IMAP4(*hostport(imap_addr))
try:
    wrong.login(user, "not the password")
    raise SystemExit("IMAP: a wrong password logged in")
except imaplib.IMAP4.error as e:
    check("IMAP wrong password refused", "AUTHENTICATIONFAILED" in str(e), str(e))
wrong.logout()
check("IMAP create", m.create("Py")[0] == "OK", None)
for body in (small, big):
    typ, data = m.append("INBOX", None, None, body)
    check("IMAP append %d bytes" % len(body), typ == "OK", data)
typ, data = m.select("INBOX")
check("IMAP select", typ == "OK" and int(data[0]) >= 2, data)
count = int(data[0])
typ, data = m.uid("SEARCH", None, "ALL")
uids = data[0].split()
check("IMAP uid search", typ == "OK" and len(uids) == count, data)
for uid, want in zip(uids[-2:], (small, big)):
    typ, data = m.uid("FETCH", uid, "(BODY.PEEK[])")
    check("IMAP fetch of %d bytes comes back whole" % len(want), typ == "OK" and data[0][1] == want, len(data[0][1]))
check("IMAP store", m.uid("STORE", uids[-1], "+FLAGS", "(\\Flagged)")[0] == "OK", None)
check("IMAP copy", m.uid("COPY", uids[-2], "Py")[0] == "OK", None)
typ, data = m.status("Py", "(MESSAGES)")
check("IMAP status of the copy", typ == "OK" and b"MESSAGES 1" in data[0], data)
check("IMAP close", m.close()[0] == "OK", None)
check("IMAP delete", m.delete("Py")[0] == "OK", None)
check("IMAP logout", m.logout()[0] == "BYE", None)

# POP3: the same mailbox.
p = poplib.POP3(*hostport(pop_addr))
caps = p.capa()
check("POP3 CAPA before login offers USER and SASL PLAIN", "USER" in caps and caps.get("SASL") == ["PLAIN"], caps)
p.user(user)
try:
    p.pass_("not the password")
    raise SystemExit("POP3: a wrong password logged in")
except poplib.error_proto as e:
    check("POP3 wrong password refused", b"[AUTH]" in e.args[0], e.args)
p.quit()
p = poplib.POP3(*hostport(pop_addr))
p.user(user)
check("POP3 login", p.pass_(password).startswith(b"+OK"), None)
n, size = p.stat()
check("POP3 stat", n == count, (n, size))
resp, lines, octets = p.retr(n)
check("POP3 retr of the big message comes back whole", b"\r\n".join(lines) + b"\r\n" == big, octets)
resp, lines, octets = p.retr(n - 1)
check("POP3 retr undoes dot-stuffing", b"\r\n".join(lines) + b"\r\n" == small, lines)
resp, lines, _ = p.top(n, 2)
check("POP3 top", lines[:2] == big.split(b"\r\n")[:2], lines[:3])
resp, listing, _ = p.uidl()
check("POP3 uidl", len(listing) == n, listing)
check("POP3 dele", p.dele(1).startswith(b"+OK"), None)
check("POP3 rset", p.rset().startswith(b"+OK"), None)
check("POP3 quit", p.quit().startswith(b"+OK"), None)

# SMTP: both kinds of upstream port, a message on each of two connections
# (with session reuse on, the second takes the session the first's QUIT
# left); the test reads what Dovecot relayed.
for name, addr in (("starttls", smtp_starttls_addr), ("implicit-tls", smtp_tls_addr)):
    for round in (1, 2):
        s = smtplib.SMTP(*hostport(addr), timeout=30)
        code, _ = s.ehlo("python.example")
        check("SMTP %s EHLO" % name, code == 250 and "starttls" not in s.esmtp_features, s.esmtp_features)
        if name == "starttls" and round == 1:  # smtplib tries PLAIN, then LOGIN: two wrong passwords
            try:
                s.login(user, "not the password")
                raise SystemExit("SMTP: a wrong password logged in")
            except smtplib.SMTPAuthenticationError as e:
                check("SMTP wrong password refused", e.smtp_code == 535, e)
        s.login(user, password)
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = user, "python@example.net", "python via %s #%d" % (name, round)
        msg.set_content(".leading dot\nQUIT\nna\u00efve\n")
        check("SMTP %s send_message #%d" % (name, round), s.send_message(msg) == {}, None)
        check("SMTP %s quit #%d" % (name, round), s.quit()[0] == 221, None)

# IMAP again, with AUTHENTICATE PLAIN (with session reuse on, it takes the
# session the first IMAP login's LOGOUT left; the POP3 and SMTP work above
# gave the proxy's reset of it time to finish).
m = imaplib.IMAP4(*hostport(imap_addr))
typ, data = m.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, password)).encode())
check("IMAP AUTHENTICATE PLAIN", typ == "OK", data)
m.logout()
print("all checks passed")
