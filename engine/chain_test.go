package engine

import (
	"slices"
	"testing"
)

type chainNode struct {
	id int
	on links[chainNode]
}

func (n *chainNode) chainLinks() *links[chainNode] { return &n.on }

func chainIDs(c *chain[chainNode, *chainNode]) []int {
	var ids []int
	c.each(func(n *chainNode) { ids = append(ids, n.id) })
	return ids
}

// Taking values off a chain from its head, its middle and its tail
// keeps the rest linked and counted; a value not on the chain (taken
// already, or never put) is reported so and changes nothing, which is
// how a silent client's close knows the sweep took it first.
func TestChain(t *testing.T) {
	var c chain[chainNode, *chainNode]
	nodes := make([]*chainNode, 5)
	for i := range nodes {
		nodes[i] = &chainNode{id: i}
		c.push(nodes[i])
	}
	if ids := chainIDs(&c); !slices.Equal(ids, []int{4, 3, 2, 1, 0}) || c.n != 5 {
		t.Fatalf("after five pushes: %v (n %d)", ids, c.n)
	}
	for _, i := range []int{2, 4, 0} { // middle, head, tail
		if !c.remove(nodes[i]) {
			t.Fatalf("node %d was on the chain", i)
		}
	}
	if c.remove(nodes[2]) || c.remove(&chainNode{id: 9}) {
		t.Fatal("a node not on the chain was removed")
	}
	if ids := chainIDs(&c); !slices.Equal(ids, []int{3, 1}) || c.n != 2 {
		t.Fatalf("after removals: %v (n %d)", ids, c.n)
	}
	// each lets f take the value it is given off the chain.
	c.each(func(n *chainNode) { c.remove(n) })
	if c.head != nil || c.n != 0 {
		t.Fatalf("after removing all in each: head %v, n %d", c.head, c.n)
	}
	c.push(nodes[2]) // a removed node can go back on
	if ids := chainIDs(&c); !slices.Equal(ids, []int{2}) {
		t.Fatalf("pushed again: %v", ids)
	}
}
