package sdk

import "testing"

func TestBufferPoolTiers(t *testing.T) {
	p := newDirtyPool()
	for _, c := range []struct{ n, capWant int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 512}, {300 << 10, 512 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20}, {64 << 20, 64 << 20},
	} {
		b := p.Get(c.n)
		if len(*b) != c.n || cap(*b) != c.capWant {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", c.n, len(*b), cap(*b), c.n, c.capWant)
		}
		p.Put(b)
	}
	// Above the largest tier: an exact allocation, never pooled.
	big := p.Get(64<<20 + 1)
	if len(*big) != 64<<20+1 {
		t.Fatalf("Get above the largest tier: len %d", len(*big))
	}
	p.Put(big)
}

func TestBufferPoolReusesAndKeepsContents(t *testing.T) {
	p := newDirtyPool()
	b := p.Get(1000)
	for i := range *b {
		(*b)[i] = 7
	}
	// A prefix of the buffer goes back, as gRPC's contract allows.
	short := (*b)[:10]
	p.Put(&short)
	// sync.Pool may drop items at any time (a GC); retry a few times.
	for range 10 {
		c := p.Get(600)
		if cap(*c) != 1024 || len(*c) != 600 {
			t.Fatalf("Get(600): len %d cap %d, want 600 and 1024", len(*c), cap(*c))
		}
		if (*c)[599] == 7 {
			return // reused without clearing: what saves the clear of every message
		}
		p.Put(c)
	}
	t.Skip("sync.Pool dropped the buffer every time; reuse not observable here")
}

func TestBufferPoolIgnoresForeignBuffers(t *testing.T) {
	p := newDirtyPool()
	odd := make([]byte, 10, 1000) // not a tier capacity
	p.Put(&odd)
	b := p.Get(1000)
	if cap(*b) != 1024 {
		t.Fatalf("a foreign buffer of capacity 1000 was handed out (cap %d)", cap(*b))
	}
}
