// Jakarta Mail (JavaMail), the mail library of most Java business apps,
// through the proxy: run by TestDovecotJakartaMail as a single-file
// program (java -cp <jakarta mail jars> JakartaMailClient.java ...).
// Every check throws on a mismatch, so the exit status says whether all
// held. Nothing here is ours but the script: the protocol code is the
// library's, with its default settings but for the hosts and ports.

import jakarta.mail.AuthenticationFailedException;
import jakarta.mail.Flags;
import jakarta.mail.Folder;
import jakarta.mail.Message;
import jakarta.mail.Session;
import jakarta.mail.Store;
import jakarta.mail.Transport;
import jakarta.mail.internet.InternetAddress;
import jakarta.mail.internet.MimeMessage;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Properties;

public class JakartaMailClient {
    static void check(String what, boolean ok, Object got) {
        if (!ok) {
            throw new IllegalStateException(what + ": got " + got);
        }
        System.out.println("ok   " + what);
    }

    static String[] hostPort(String addr) {
        int i = addr.lastIndexOf(':');
        return new String[] {addr.substring(0, i), addr.substring(i + 1)};
    }

    static Session session(String proto, String addr) {
        String[] hp = hostPort(addr);
        Properties p = new Properties();
        p.put("mail." + proto + ".host", hp[0]);
        p.put("mail." + proto + ".port", hp[1]);
        p.put("mail." + proto + ".connectiontimeout", "20000");
        p.put("mail." + proto + ".timeout", "20000");
        if (proto.equals("smtp")) {
            p.put("mail.smtp.auth", "true");
        }
        return Session.getInstance(p);
    }

    static String raw(Message m) throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        m.writeTo(out);
        return out.toString(StandardCharsets.UTF_8);
    }

    // find is the folder's message with this subject, or null.
    static Message find(Folder folder, String subject) throws Exception {
        Message found = null;
        for (Message x : folder.getMessages()) {
            if (subject.equals(x.getSubject())) {
                found = x;
            }
        }
        return found;
    }

    public static void main(String[] args) throws Exception {
        String imapAddr = args[0], popAddr = args[1], smtpAddr = args[2], user = args[3], password = args[4];
        String subject = "jakarta mail " + System.nanoTime();
        String body = "line one\r\n.leading dot\r\n..two dots\r\nna\u00efve\r\n";

        // IMAP: log in, append, find the message again and read it whole.
        Session imap = session("imap", imapAddr);
        Store store = imap.getStore("imap");
        store.connect(user, password);
        check("IMAP login", store.isConnected(), false);
        Folder inbox = store.getFolder("INBOX");
        inbox.open(Folder.READ_WRITE);
        MimeMessage m = new MimeMessage(imap);
        m.setFrom(new InternetAddress(user));
        m.setSubject(subject);
        m.setText(body, "UTF-8");
        m.saveChanges();
        inbox.appendMessages(new Message[] {m});
        Message found = find(inbox, subject);
        check("IMAP append, then the message found by its subject", found != null, inbox.getMessageCount());
        check("IMAP message content as appended", body.equals(found.getContent()), found.getContent());
        found.setFlag(Flags.Flag.FLAGGED, true);
        check("IMAP store a flag", found.isSet(Flags.Flag.FLAGGED), found.getFlags());
        inbox.close(false);
        store.close();

        // A wrong password: the library's own exception.
        try {
            Store wrong = session("imap", imapAddr).getStore("imap");
            wrong.connect(user, "not the password");
            throw new IllegalStateException("IMAP: a wrong password logged in");
        } catch (AuthenticationFailedException e) {
            check("IMAP wrong password refused", true, e);
        }

        // POP3: the same mailbox; the message is there, byte for byte.
        Store pop = session("pop3", popAddr).getStore("pop3");
        pop.connect(user, password);
        Folder popInbox = pop.getFolder("INBOX");
        popInbox.open(Folder.READ_ONLY);
        Message popFound = find(popInbox, subject);
        check("POP3 message found by its subject", popFound != null, popInbox.getMessageCount());
        check("POP3 message content as appended", body.equals(popFound.getContent()), popFound.getContent());
        popInbox.close(false);
        pop.close();

        // SMTP: send one message (AUTH as the library picks it).
        Session smtp = session("smtp", smtpAddr);
        MimeMessage s = new MimeMessage(smtp);
        s.setFrom(new InternetAddress(user));
        s.setRecipient(Message.RecipientType.TO, new InternetAddress("jakarta@example.net"));
        s.setSubject("sent by jakarta");
        s.setText("sent\r\n.dot line\r\n", "UTF-8");
        Transport.send(s, user, password);
        check("SMTP send", true, null);

        System.out.println("all checks passed");
    }
}
