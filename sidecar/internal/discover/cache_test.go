package discover

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestCacheReusesThenRefreshes(t *testing.T) {
	src := &fakeGPUSource{devs: []fakeGPU{{name: "H200", total: 140 << 30, free: 100 << 30}}}
	c := NewCache(&Discoverer{GPUs: src}, time.Minute)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	c.Prefetch()
	ctx := context.Background()
	r1, stale, err := c.Report(ctx, true)
	if err != nil || stale || len(r1.GPUs) != 1 || r1.GPUs[0].MemoryFreeBytes != 100<<30 {
		t.Fatalf("first report: %+v stale %v err %v", r1, stale, err)
	}
	src.devs[0].free = 40 << 30
	now = now.Add(30 * time.Second)
	if r2, _, _ := c.Report(ctx, true); r2 != r1 {
		t.Fatalf("a report younger than MaxAge was collected again")
	}
	now = now.Add(31 * time.Second)
	r3, stale, err := c.Report(ctx, true)
	if err != nil || stale || r3 == r1 || r3.GPUs[0].MemoryFreeBytes != 40<<30 {
		t.Fatalf("after MaxAge: free %d stale %v err %v; want a fresh report with 40 GiB free", r3.GPUs[0].MemoryFreeBytes, stale, err)
	}
}

func TestCacheBoundedByContext(t *testing.T) {
	block := make(chan struct{})
	src := &fakeGPUSource{block: block}
	c := NewCache(&Discoverer{GPUs: src}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := c.Report(ctx, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hung collection with no report yet: err %v, want the deadline", err)
	}
	close(block) // the collection in flight ends and is kept
	r, stale, err := c.Report(context.Background(), true)
	if err != nil || stale || r == nil {
		t.Fatalf("after the collection ended: %v %v %v", r, stale, err)
	}
	// MaxAge 0: every call collects again; a hung one falls back to the last report.
	src.block = make(chan struct{})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	r2, stale, err := c.Report(ctx2, true)
	if err != nil || !stale || r2 != r {
		t.Fatalf("a hung refresh: got %p stale %v err %v, want the last report %p marked stale", r2, stale, err, r)
	}
	close(src.block)
}

func TestCacheOneCollectionAtATime(t *testing.T) {
	block := make(chan struct{})
	src := &fakeGPUSource{block: block, devs: []fakeGPU{{name: "A100", total: 80 << 30, free: 70 << 30}}}
	c := NewCache(&Discoverer{GPUs: src}, time.Hour)
	var wg sync.WaitGroup
	got := make([]*Report, 8)
	for i := range got {
		wg.Go(func() {
			r, _, err := c.Report(context.Background(), true)
			if err != nil {
				t.Error(err)
			}
			got[i] = r
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(block)
	wg.Wait()
	for _, r := range got {
		if r != got[0] {
			t.Fatal("concurrent callers got different reports: more than one collection ran")
		}
	}
	if src.shutdown != 1 {
		t.Fatalf("NVML was initialised %d times, want 1", src.shutdown)
	}
}

func TestCacheServesOldReportsAtOnceWhenFreshnessIsNotNeeded(t *testing.T) {
	src := &fakeGPUSource{devs: []fakeGPU{{name: "H100", total: 80 << 30, free: 70 << 30}}}
	c := NewCache(&Discoverer{GPUs: src}, time.Second)
	now := time.Unix(1000, 0)
	c.mu.Lock()
	c.now = func() time.Time { return now }
	c.mu.Unlock()
	ctx := context.Background()
	r1, _, err := c.Report(ctx, false) // nothing yet: waits for the first collection
	if err != nil || r1 == nil {
		t.Fatalf("first report: %v %v", r1, err)
	}
	block := make(chan struct{})
	src.block = block
	c.mu.Lock()
	now = now.Add(time.Minute) // old now
	c.mu.Unlock()
	r2, stale, err := c.Report(ctx, false)
	if err != nil || stale || r2 != r1 {
		t.Fatalf("an old report with fresh=false: got %p %v %v, want the cached %p at once", r2, stale, err, r1)
	}
	close(block) // the background refresh started by that call ends
	r3, _, err := c.Report(ctx, true)
	if err != nil || r3 == r1 {
		t.Fatalf("after the refresh: %p %v, want a new report", r3, err)
	}
}
