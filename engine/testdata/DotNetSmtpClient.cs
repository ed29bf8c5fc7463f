// .NET's System.Net.Mail.SmtpClient, which Windows business apps (ERP and
// reporting tools, scheduled jobs) send their mail with, here on Mono: run
// through the proxy by TestDovecotDotNetSmtp (plaintext, as the proxy is
// meant to be used) and by TestLocalTLSMailApps (EnableSsl: STARTTLS to
// the proxy's own listener, for the apps that cannot turn TLS off). Each
// check throws on a mismatch. Nothing here is ours but the program.
//
// Arguments: plain|starttls|starttls-refused HOST:PORT USER PASSWORD
// [CERT.pem]; over TLS, the proxy's certificate must be the one in
// CERT.pem. starttls-refused: the TLS handshake must fail.
using System;
using System.Collections;
using System.IO;
using System.Net;
using System.Net.Mail;
using System.Security.Authentication;
using System.Text;

class DotNetSmtpClient
{
    static void Check(string what, bool ok, object got)
    {
        if (!ok)
            throw new Exception(what + ": got " + got);
        Console.WriteLine("ok   " + what);
    }

    static SmtpClient Client(string addr, string user, string password, bool tls)
    {
        int colon = addr.LastIndexOf(':');
        var c = new SmtpClient(addr.Substring(0, colon), int.Parse(addr.Substring(colon + 1)));
        c.DeliveryMethod = SmtpDeliveryMethod.Network;
        c.UseDefaultCredentials = false;
        c.Credentials = new NetworkCredential(user, password);
        c.EnableSsl = tls;
        c.Timeout = 30000;
        return c;
    }

    static MailMessage Message(string from, string to)
    {
        var m = new MailMessage(from, to, "sent by dotnet", "sent\r\n.dot line\r\n");
        m.BodyEncoding = Encoding.ASCII;
        return m;
    }

    // TrustOnly accepts the one certificate in the PEM file pinned, byte
    // for byte: Mono's own checks cannot read the ECDSA keys the test's
    // certificates have, so none of them is asked.
    static void TrustOnly(string pinnedPEM)
    {
        string pem = File.ReadAllText(pinnedPEM);
        int from = pem.IndexOf("-----BEGIN CERTIFICATE-----") + "-----BEGIN CERTIFICATE-----".Length;
        byte[] pinned = Convert.FromBase64String(pem.Substring(from, pem.IndexOf("-----END CERTIFICATE-----") - from));
        ServicePointManager.ServerCertificateValidationCallback = (sender, cert, chain, errors) =>
            cert != null && StructuralComparisons.StructuralEqualityComparer.Equals(cert.GetRawCertData(), pinned);
    }

    static int Main(string[] args)
    {
        string mode = args[0], addr = args[1], user = args[2], password = args[3];
        bool tls = mode != "plain";
        if (tls)
            TrustOnly(args[4]);
        if (mode == "starttls-refused")
        {
            // Mono's SmtpClient offers TLS 1.0 only (as .NET Framework
            // before 4.7 does by default), which Exchange Online refuses,
            // and the proxy too unless the section allows it.
            try
            {
                using (var c = Client(addr, user, password, tls))
                    c.Send(Message(user, "tls10@example.net"));
                Check("SmtpClient offering only TLS 1.0 is refused", false, "the message was sent");
            }
            catch (SmtpException e)
            {
                Check("SmtpClient offering only TLS 1.0 is refused", e.InnerException is AuthenticationException, e);
            }
            Console.WriteLine("all checks passed");
            return 0;
        }

        using (var c = Client(addr, user, password, tls))
            c.Send(Message(user, "dotnet@example.net"));
        Check("SmtpClient sends", true, null);

        try
        {
            using (var c = Client(addr, user, password + "-wrong", tls))
                c.Send(Message(user, "wrong@example.net"));
            Check("SmtpClient with a wrong password is refused", false, "the message was sent");
        }
        catch (SmtpException e)
        {
            Check("SmtpClient with a wrong password is refused (" + e.Message + ")", true, null);
        }
        Console.WriteLine("all checks passed");
        return 0;
    }
}
