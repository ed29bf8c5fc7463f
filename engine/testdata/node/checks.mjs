// What the Node.js client scripts share: a check that throws on a
// mismatch, and host:port split.

export function check(what, ok, got) {
  if (!ok) throw new Error(`${what}: got ${JSON.stringify(got)}`);
  console.log(`ok   ${what}`);
}

export function hostPort(addr) {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i), Number(addr.slice(i + 1))];
}
