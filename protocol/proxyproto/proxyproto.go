// Package proxyproto reads the PROXY protocol header (versions 1 and 2,
// as HAProxy, nginx stream and AWS NLB send it) that a TCP load balancer
// puts before a client's bytes, to tell the client's own address. It does
// no I/O.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
)

// MaxHeader is the longest header: version 2 with the longest addresses
// and some TLVs; version 1 is at most 107 bytes.
const MaxHeader = 16 + 536

var signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// ErrInvalid is a header that is not a valid PROXY protocol header.
var ErrInvalid = errors.New("not a valid PROXY protocol header")

// Parse reads a header at the start of in. It returns the bytes the header
// takes and the client's address, or done false when in holds only part
// of a header so far. A valid header that names no address (LOCAL,
// UNKNOWN: a health check of the balancer's own) gives a zero source.
func Parse(in []byte) (n int, source netip.AddrPort, done bool, err error) {
	switch {
	case len(in) == 0:
		return 0, source, false, nil
	case in[0] == 'P':
		return parseV1(in)
	case in[0] == '\r':
		return parseV2(in)
	}
	return 0, source, false, ErrInvalid
}

func parseV1(in []byte) (int, netip.AddrPort, bool, error) {
	var zero netip.AddrPort
	end := bytes.Index(in, []byte("\r\n"))
	if end < 0 {
		if len(in) >= 107 || !bytes.HasPrefix([]byte("PROXY "), in[:min(len(in), 6)]) {
			return 0, zero, false, ErrInvalid
		}
		return 0, zero, false, nil
	}
	if end > 105 {
		return 0, zero, false, ErrInvalid
	}
	f := bytes.Split(in[:end], []byte(" "))
	if len(f) < 2 || string(f[0]) != "PROXY" {
		return 0, zero, false, ErrInvalid
	}
	switch string(f[1]) {
	case "UNKNOWN":
		return end + 2, zero, true, nil
	case "TCP4", "TCP6":
	default:
		return 0, zero, false, ErrInvalid
	}
	if len(f) != 6 {
		return 0, zero, false, ErrInvalid
	}
	src, err1 := netip.ParseAddr(string(f[2]))
	_, err2 := netip.ParseAddr(string(f[3]))
	port, err3 := strconv.ParseUint(string(f[4]), 10, 16)
	_, err4 := strconv.ParseUint(string(f[5]), 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || src.Is4() != (string(f[1]) == "TCP4") {
		return 0, zero, false, ErrInvalid
	}
	return end + 2, netip.AddrPortFrom(src, uint16(port)), true, nil
}

func parseV2(in []byte) (int, netip.AddrPort, bool, error) {
	var zero netip.AddrPort
	if !bytes.HasPrefix(signature, in[:min(len(in), len(signature))]) {
		return 0, zero, false, ErrInvalid
	}
	if len(in) < 16 {
		return 0, zero, false, nil
	}
	verCmd, fam := in[12], in[13]
	length := int(binary.BigEndian.Uint16(in[14:16]))
	if verCmd>>4 != 2 || length > MaxHeader-16 {
		return 0, zero, false, ErrInvalid
	}
	if len(in) < 16+length {
		return 0, zero, false, nil
	}
	body, n := in[16:16+length], 16+length
	switch {
	case verCmd&0xF == 0: // LOCAL: the balancer's own connection
		return n, zero, true, nil
	case verCmd&0xF != 1:
		return 0, zero, false, ErrInvalid
	}
	switch fam >> 4 {
	case 1: // AF_INET
		if len(body) < 12 {
			return 0, zero, false, ErrInvalid
		}
		src := netip.AddrFrom4([4]byte(body[0:4]))
		return n, netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[8:10])), true, nil
	case 2: // AF_INET6
		if len(body) < 36 {
			return 0, zero, false, ErrInvalid
		}
		src := netip.AddrFrom16([16]byte(body[0:16]))
		return n, netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[32:34])), true, nil
	}
	return n, zero, true, nil // AF_UNSPEC or UNIX: no address to use
}
