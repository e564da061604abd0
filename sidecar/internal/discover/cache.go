package discover

import (
	"context"
	"sync"
	"time"
)

// Cache serves reports of one Discoverer to the sidecar's registrations,
// which take their defaults from it. A report older than MaxAge is collected
// again, since free GPU memory changes as a job loads its model; one
// collection runs at a time, and callers wait for it no longer than their
// context allows. The zero MaxAge re-collects on every call.
type Cache struct {
	d      *Discoverer
	maxAge time.Duration
	now    func() time.Time

	mu      sync.Mutex
	report  *Report
	at      time.Time
	running chan struct{} // closed when the collection in flight ends; nil when none
}

// NewCache returns a cache over d whose reports are reused for maxAge.
func NewCache(d *Discoverer, maxAge time.Duration) *Cache {
	return &Cache{d: d, maxAge: maxAge, now: time.Now}
}

// Prefetch starts a collection in the background, so that the first
// registration finds a report ready.
func (c *Cache) Prefetch() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.startLocked()
}

// startLocked starts a collection unless one is in flight, and returns the
// channel closed when it ends.
func (c *Cache) startLocked() chan struct{} {
	if c.running != nil {
		return c.running
	}
	done := make(chan struct{})
	c.running = done
	go func() {
		r := c.d.collect()
		c.mu.Lock()
		c.report, c.at, c.running = r, c.now(), nil
		c.mu.Unlock()
		close(done)
	}()
	return done
}

// Report returns a report no older than MaxAge when fresh is true,
// collecting one when needed; when ctx ends first it returns the last report
// it has, if any (with stale true), else ctx's error. With fresh false (what
// link bandwidths need: they do not change as jobs load) any report it has
// is returned at once, and an old one is refreshed in the background; only
// before the first collection ends does it wait.
func (c *Cache) Report(ctx context.Context, fresh bool) (r *Report, stale bool, err error) {
	c.mu.Lock()
	if c.report != nil && (!fresh || c.now().Sub(c.at) <= c.maxAge) {
		r = c.report
		if c.now().Sub(c.at) > c.maxAge {
			c.startLocked()
		}
		c.mu.Unlock()
		return r, false, nil
	}
	done := c.startLocked()
	c.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		c.mu.Lock()
		r = c.report
		c.mu.Unlock()
		if r != nil {
			return r, true, nil
		}
		return nil, false, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.report, false, nil
}
