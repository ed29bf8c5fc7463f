#!/usr/bin/perl
# Perl's mail modules, which many help desks and admin scripts poll and
# send with (Mail::IMAPClient, and Net::POP3 and Net::SMTP from Perl's
# own libnet): run by TestDovecotScriptClients through the proxy. Every
# check dies on a mismatch. Nothing here is ours but the script.
use strict;
use warnings;
use Mail::IMAPClient;
use Net::POP3;
use Net::SMTP;

my ($imap_addr, $pop_addr, $smtp_addr, $user, $password) = @ARGV;
sub check { my ($what, $ok, $got) = @_; die "$what: got " . ($got // 'undef') . "\n" unless $ok; print "ok   $what\n"; }
sub hp { my ($a) = @_; $a =~ /^(.*):(\d+)$/ or die "address $a"; return ($1, $2); }

my $subject = "perl-" . time() . "-$$";  # one word: searched for unquoted
my $body = "line one\r\n.leading dot\r\n..two dots\r\n";
my $message = "From: $user\r\nSubject: $subject\r\n\r\n$body";

my ($ih, $ip) = hp($imap_addr);
my $imap = Mail::IMAPClient->new(Server => $ih, Port => $ip, User => $user, Password => $password, Uid => 1)
    or die "IMAP login: $@\n";
check("IMAP login", $imap->IsAuthenticated, $imap->LastError);
my $uid = $imap->append_string("INBOX", $message);
check("IMAP append", defined $uid, $imap->LastError);
$imap->select("INBOX") or die "select: " . $imap->LastError;
my @found = $imap->search(HEADER => "Subject", $subject);
check("IMAP search finds the message appended", @found == 1, scalar @found);
check("IMAP message as appended", $imap->message_string($found[0]) eq $message, $imap->message_string($found[0]));
$imap->logout;

my $wrong = Mail::IMAPClient->new(Server => $ih, Port => $ip, User => $user, Password => "not the password");
check("IMAP wrong password refused", !$wrong, "logged in");

my ($ph, $pp) = hp($pop_addr);
my $pop = Net::POP3->new($ph, Port => $pp, Timeout => 20) or die "POP3 connect: $@\n";
my $count = $pop->login($user, $password);
check("POP3 login", defined $count && $count > 0, $count);
my $seen = 0;
for my $n (1 .. $count) {
    my $lines = $pop->get($n) or next;
    my $text = join("", @$lines);
    if (index($text, "Subject: $subject") >= 0) {
        (my $got = $text) =~ s/\r?\n/\r\n/g;
        check("POP3 message as appended", $got eq $message, $got);
        $seen = 1;
    }
}
check("POP3 finds the message appended", $seen, $count);
$pop->quit;

my ($sh, $sp) = hp($smtp_addr);
my $smtp = Net::SMTP->new($sh, Port => $sp, Timeout => 20) or die "SMTP connect: $@\n";
check("SMTP AUTH", $smtp->auth($user, $password), $smtp->message);
check("SMTP MAIL", $smtp->mail($user), $smtp->message);
check("SMTP RCPT", $smtp->to('perl@example.net'), $smtp->message);
check("SMTP DATA", $smtp->data("From: $user\r\nSubject: sent by perl\r\n\r\nsent\r\n.dot line\r\n"), $smtp->message);
$smtp->quit;
print "all checks passed\n";
