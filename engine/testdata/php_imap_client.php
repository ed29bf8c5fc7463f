<?php
// PHP's imap extension (the UW c-client library underneath), which many
// PHP help desks and CRMs poll mailboxes with: run by
// TestDovecotScriptClients through the proxy. Every check exits non-zero
// on a mismatch. Nothing here is ours but the script.

[$_, $imapAddr, $popAddr, $user, $password] = $argv;

function check(string $what, bool $ok, $got): void {
    if (!$ok) {
        fwrite(STDERR, "$what: got " . var_export($got, true) . "\n" . implode("\n", imap_errors() ?: []) . "\n");
        exit(1);
    }
    echo "ok   $what\n";
}

// /notls: c-client would take STARTTLS if a listener offered it; this
// one is plaintext, as a legacy app's usually is.
$subject = "php imap " . hrtime(true);
$body = "line one\r\n.leading dot\r\n..two dots\r\nna\xc3\xafve\r\n";
$message = "From: $user\r\nSubject: $subject\r\n\r\n$body";

$imap = imap_open("{" . $imapAddr . "/imap/notls}INBOX", $user, $password, 0, 1);
check("IMAP login", $imap !== false, false);
check("IMAP append", imap_append($imap, "{" . $imapAddr . "/imap/notls}INBOX", $message), false);
$found = imap_search($imap, 'SUBJECT "' . $subject . '"', SE_UID);
check("IMAP search finds the message appended", is_array($found) && count($found) === 1, $found);
$uid = $found[0];
check("IMAP body as appended", imap_body($imap, $uid, FT_UID | FT_PEEK) === $body, imap_body($imap, $uid, FT_UID | FT_PEEK));
check("IMAP header as appended", str_contains(imap_fetchheader($imap, $uid, FT_UID), "Subject: $subject\r\n"), imap_fetchheader($imap, $uid, FT_UID));
check("IMAP set a flag", imap_setflag_full($imap, (string)$uid, "\\Flagged", ST_UID), false);
imap_close($imap);

// A wrong password: refused (c-client retries it up to the count given).
$wrong = @imap_open("{" . $imapAddr . "/imap/notls}INBOX", $user, "not the password", OP_HALFOPEN, 0);
check("IMAP wrong password refused", $wrong === false, $wrong);
imap_errors();

$pop = imap_open("{" . $popAddr . "/pop3/notls}INBOX", $user, $password, 0, 1);
check("POP3 login", $pop !== false, false);
$n = imap_num_msg($pop);
$seen = false;
for ($i = 1; $i <= $n; $i++) {
    if (str_contains(imap_fetchheader($pop, $i), "Subject: $subject\r\n")) {
        check("POP3 body as appended", imap_body($pop, $i) === $body, imap_body($pop, $i));
        $seen = true;
    }
}
check("POP3 finds the message appended", $seen, $n);
imap_close($pop);
echo "all checks passed\n";
