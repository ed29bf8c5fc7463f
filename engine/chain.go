package engine

// chain is an intrusive doubly linked list: its nodes are the values
// themselves (each carries its links), so putting a connection on it
// allocates nothing. The Server keeps its event-loop clients on chains,
// for the idle sweep and a drain; not safe for concurrent use (the
// Server guards its chains with sessMu).
type chain[T any, P linked[T]] struct {
	head *T
	n    int // values on the chain
}

// links are a value's place on a chain.
type links[T any] struct{ prev, next *T }

// linked is a pointer to a value that carries its links.
type linked[T any] interface {
	*T
	chainLinks() *links[T]
}

// push puts x first on the chain.
func (c *chain[T, P]) push(x P) {
	l := x.chainLinks()
	l.next = c.head
	if c.head != nil {
		P(c.head).chainLinks().prev = x
	}
	c.head = x
	c.n++
}

// remove takes x off the chain; false if x was not on it.
func (c *chain[T, P]) remove(x P) bool {
	l := x.chainLinks()
	if l.prev == nil && c.head != x {
		return false
	}
	if l.prev != nil {
		P(l.prev).chainLinks().next = l.next
	} else {
		c.head = l.next
	}
	if l.next != nil {
		P(l.next).chainLinks().prev = l.prev
	}
	l.prev, l.next = nil, nil
	c.n--
	return true
}

// each calls f with every value on the chain, the newest first; f may
// remove the value it is given.
func (c *chain[T, P]) each(f func(P)) {
	for x := c.head; x != nil; {
		next := P(x).chainLinks().next
		f(x)
		x = next
	}
}
