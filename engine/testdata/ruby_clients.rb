# Ruby's mail libraries (net-imap, net-pop, net-smtp, bundled with Ruby),
# which Ruby help desks such as Zammad poll and send with: run by
# TestDovecotScriptClients through the proxy. Every check raises on a
# mismatch. Nothing here is ours but the script.
require "net/imap"
require "net/pop"
require "net/smtp"

imap_addr, pop_addr, smtp_addr, user, password = ARGV

def check(what, ok, got)
  raise "#{what}: got #{got.inspect}" unless ok
  puts "ok   #{what}"
end

def hp(addr)
  host, port = addr.match(/\A(.*):(\d+)\z/).captures
  [host, Integer(port)]
end

subject = "ruby #{Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)}"
body = "line one\r\n.leading dot\r\n..two dots\r\nna\u00efve\r\n".b
message = "From: #{user}\r\nSubject: #{subject}\r\n\r\n".b + body

host, port = hp(imap_addr)
imap = Net::IMAP.new(host, port: port, ssl: false)
imap.authenticate("PLAIN", user, password)
imap.append("INBOX", message)
imap.select("INBOX")
uids = imap.uid_search(["HEADER", "Subject", subject])
check("IMAP search finds the message appended", uids.size == 1, uids)
got = imap.uid_fetch(uids[0], "BODY.PEEK[]")[0].attr["BODY[]"]
check("IMAP message as appended", got.b == message, got)
imap.logout
imap.disconnect

begin
  wrong = Net::IMAP.new(host, port: port, ssl: false)
  wrong.login(user, "not the password")
  raise "IMAP: a wrong password logged in"
rescue Net::IMAP::NoResponseError => e
  code = e.response.data.code&.name
  check("IMAP wrong password refused with [AUTHENTICATIONFAILED]", code == "AUTHENTICATIONFAILED", [code, e.message])
ensure
  wrong&.disconnect
end

host, port = hp(pop_addr)
seen = false
Net::POP3.start(host, port, user, password) do |pop|
  pop.each_mail do |m|
    text = m.pop
    next unless text.include?("Subject: #{subject}\r\n")
    check("POP3 message as appended", text.b == message, text)
    seen = true
  end
end
check("POP3 finds the message appended", seen, nil)

host, port = hp(smtp_addr)
smtp = Net::SMTP.new(host, port)
smtp.disable_starttls if smtp.respond_to?(:disable_starttls)
smtp.start(helo: "ruby.example", user: user, secret: password, authtype: :login) do |s|
  s.send_message("From: #{user}\r\nSubject: sent by ruby\r\n\r\nsent\r\n.dot line\r\n", user, "ruby@example.net")
end
check("SMTP send", true, nil)
puts "all checks passed"
