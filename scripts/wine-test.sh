#!/usr/bin/env bash
# Runs the Windows build of emailproxy under Wine against the mock provider
# and logs in through it over IMAP, POP3 and SMTP with Linux clients
# (Python's imaplib, poplib and smtplib), fetching mail; then installs it
# as a Windows service, starts, queries, stops and removes it.
#
#   bash scripts/wine-test.sh      (as root on Debian: installs wine64 and
#                                   gcc-mingw-w64-x86-64 if missing)
#
# Wine 8.0 lacks bcryptprimitives.dll!ProcessPrng, which Go 1.22 and later
# call at start: a ten-line DLL built here with mingw provides it on top of
# advapi32's RtlGenRandom. Wine's crypt32 trusts the Linux system CA store,
# so the mock provider's CA is added to it for the run (and removed after).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wine >/dev/null || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine64 gcc-mingw-w64-x86-64 >/dev/null
fi

work=$(mktemp -d /tmp/ep-wine.XXXXXX)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wineserver -k 2>/dev/null || true
  rm -f /usr/local/share/ca-certificates/emailproxy-wine-test.crt
  update-ca-certificates >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "wine-test: building emailproxy.exe and the ProcessPrng shim"
GOOS=windows GOARCH=amd64 CGO_ENABLED=0 go build -o "$work/emailproxy.exe" ./cmd/emailproxy
GOOS=windows GOARCH=amd64 CGO_ENABLED=0 go build -o "$work/emailproxy-bench.exe" ./cmd/emailproxy-bench
go build -o "$work/emailproxy-bench" ./cmd/emailproxy-bench
cat > "$work/prng.c" <<'C'
#include <windows.h>
/* advapi32's RtlGenRandom */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG n = length > 0x40000000 ? 0x40000000 : (ULONG)length;
    if (!SystemFunction036(data, n)) return FALSE;
    data += n; length -= n;
  }
  return TRUE;
}
C
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bcryptprimitives.dll" "$work/prng.c" -ladvapi32
wineboot --init >/dev/null 2>&1 || true
wineserver -w || true
cp "$work/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
wine "$work/emailproxy.exe" --version

echo "wine-test: starting the mock provider"
base=$((20000 + RANDOM % 20000))
"$work/emailproxy-bench" upstream --mailboxes 2 --rtt 0 --token-delay 0 \
  --config-out "$work/emailproxy.config" --ca-out "$work/ca.pem" --proxy-port-base "$base" > "$work/upstream.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/ca.pem" ] && break; sleep 0.2; done
cp "$work/ca.pem" /usr/local/share/ca-certificates/emailproxy-wine-test.crt
update-ca-certificates >/dev/null 2>&1

# A local-TLS listener too (the proxy's own certificate, for localhost).
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/local.key" -out "$work/local.pem" >/dev/null 2>&1
cat >> "$work/emailproxy.config" <<CFG

[IMAP-$((base + 3))]
server_address = localhost
server_port = $(sed -n "/^\[IMAP-$base\]/,/^\[/s/^server_port = //p" "$work/emailproxy.config")
local_address = 127.0.0.1
local_certificate_path = $(winepath -w "$work/local.pem")
local_key_path = $(winepath -w "$work/local.key")
CFG

clients() {
  python3 - "$base" "$work/local.pem" <<'PY'
import imaplib, poplib, smtplib, ssl, sys
base = int(sys.argv[1])
user, pw = "box001@bench.example", "wine-test-password"
m = imaplib.IMAP4("127.0.0.1", base, timeout=30); m.login(user, pw); m.select("INBOX")
typ, data = m.uid("FETCH", "1:*", "(BODY[])"); assert typ == "OK" and b"Subject: message 1" in data[0][1], data
m.logout()
t = imaplib.IMAP4_SSL("localhost", base + 3, ssl_context=ssl.create_default_context(cafile=sys.argv[2]), timeout=30)
t.login(user, pw); t.select("INBOX"); t.logout()
p = poplib.POP3("127.0.0.1", base + 1, timeout=30); p.user(user); p.pass_(pw)
count, _ = p.stat(); assert count > 0; _, lines, _ = p.retr(1); assert b"Subject: message 1" in b"\n".join(lines)
p.quit()
s = smtplib.SMTP("127.0.0.1", base + 2, timeout=30); s.ehlo(); s.login(user, pw)
s.sendmail(user, [user], "Subject: from wine-test\r\n\r\nhello\r\n"); s.quit()
print("wine-test: IMAP (plaintext and local TLS), POP3 and SMTP through the Windows build: ok")
PY
}

echo "wine-test: the proxy as a console program"
cfg_win=$(winepath -w "$work/emailproxy.config")
wine "$work/emailproxy.exe" --no-gui --config-file "$cfg_win" > "$work/console.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$base) 2>/dev/null && break; sleep 0.3; done
clients || { cat "$work/console.log"; exit 1; }
grep -q "cannot save" "$work/console.log" && { echo "wine-test: the token cache was not saved"; cat "$work/console.log"; exit 1; }
# The key is derived in the background after the first login (PBKDF2).
for _ in $(seq 60); do grep -q "^access_token = gAAAAA" "$work/emailproxy.config" && break; sleep 0.5; done
grep -q "^access_token = gAAAAA" "$work/emailproxy.config" || { echo "wine-test: no encrypted token in the config file"; cat "$work/console.log"; exit 1; }
echo "wine-test: the token cache was written in place (atomic replace)"
kill "${pids[-1]}" 2>/dev/null || true
wineserver -k 2>/dev/null || true
sleep 1

echo "wine-test: authorise"
printf 'another-password\n' | wine "$work/emailproxy.exe" authorise --config-file "$cfg_win" box002@bench.example

echo "wine-test: --demo"
(cd "$work" && wine "$work/emailproxy.exe" --demo > "$work/demo.log" 2>&1) &
pids+=($!)
for _ in $(seq 100); do grep -q "POP3 on" "$work/demo.log" 2>/dev/null && break; sleep 0.3; done
# The ports the demo printed: it takes others when 1993 and 1995 are busy
# (another demo running on this machine), and the clients must reach this one.
python3 - "$work/demo.log" <<'PY'
import imaplib, poplib, re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
ports = re.search(r"IMAP on 127\.0\.0\.1:(\d+), POP3 on 127\.0\.0\.1:(\d+)", text)
if not ports:
    sys.exit("wine-test: --demo printed no ports:\n" + text)
imap_port, pop_port = int(ports.group(1)), int(ports.group(2))
m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30); m.login("demo@example.com", "any"); m.select("INBOX"); m.logout()
p = poplib.POP3("127.0.0.1", pop_port, timeout=30); p.user("demo@example.com"); p.pass_("any"); p.stat(); p.quit()
print("wine-test: --demo: ok (IMAP %d, POP3 %d)" % (imap_port, pop_port))
PY
kill "${pids[-1]}" 2>/dev/null || true
wineserver -k 2>/dev/null || true
sleep 1

echo "wine-test: the bench harness (its proxy a child process, trusting the mock CA through SSL_CERT_FILE)"
(cd "$work" && wine "$work/emailproxy-bench.exe" run --scenarios pop3,imap --duration 2s --concurrency 2 \
  --mailboxes 2 --big-size 0 --rtt 1ms --token-delay 0) > "$work/bench.log" 2>&1 || { cat "$work/bench.log"; exit 1; }
grep -q "imap: cycle p50" "$work/bench.log" || { cat "$work/bench.log"; exit 1; }
echo "wine-test: bench harness: ok"
wineserver -k 2>/dev/null || true
sleep 1

echo "wine-test: the proxy as a Windows service"
# Wine's server exits a few seconds after its last process that is not a
# system one (services.exe is), and takes the service with it: with only
# Linux clients talking to the service, that ended it mid-test, now and
# then. A persistent server stays until cleanup kills it.
wineserver -p
exe_win=$(winepath -w "$work/emailproxy.exe")
wine "$work/emailproxy.exe" service install --config-file "$cfg_win"
wine "$work/emailproxy.exe" service start
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$base) 2>/dev/null && break; sleep 0.3; done
wine "$work/emailproxy.exe" service status | tee "$work/status"
grep -q running "$work/status"
clients || { echo "wine-test: the service's log:"; cat "$work/emailproxy.log" "$work/emailproxy-crash.log" 2>/dev/null; exit 1; }
wine "$work/emailproxy.exe" service stop
wine "$work/emailproxy.exe" service status | tee "$work/status"
grep -q stopped "$work/status"
wine "$work/emailproxy.exe" service uninstall
log_unix="$work/emailproxy.log"
grep -q "login" "$log_unix" || { echo "wine-test: the service wrote no log next to the executable"; exit 1; }
echo "wine-test: service install, start, status, stop, uninstall: ok"
