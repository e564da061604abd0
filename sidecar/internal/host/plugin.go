package host

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// slot holds the process, if any, that serves one strategy. At most one
// process per strategy is current; a failed one is discarded (killed in the
// background) and a fresh one started for the next call.
type slot struct {
	h    *Host
	name string
	path string

	mu       sync.Mutex
	cur      *instance
	starting chan struct{} // non-nil while a start is in flight; closed when it ends
	startErr error         // error of the last start attempt
	closed   bool
	restarts int
}

// acquire returns the running process, starting one when there is none. It
// waits for a start in flight until ctx ends; a failed start is returned as
// an error (the next acquire tries again).
func (s *slot) acquire(ctx context.Context) (*instance, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if s.cur != nil {
		if !s.cur.exited() {
			in := s.cur
			s.mu.Unlock()
			return in, nil
		}
		s.discardLocked(s.cur, ReasonCrash, errors.New("plugin process exited between calls"))
	}
	ch := s.startLocked()
	s.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for plugin %s to start: %w", s.name, ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		if s.startErr == nil {
			return nil, ErrClosed
		}
		return nil, s.startErr
	}
	return s.cur, nil
}

// startLocked begins a start in the background unless one is in flight and
// returns the channel closed when it ends. s.mu must be held.
func (s *slot) startLocked() chan struct{} {
	if s.starting != nil {
		return s.starting
	}
	ch := make(chan struct{})
	s.starting = ch
	s.h.wg.Add(1)
	go func() {
		defer s.h.wg.Done()
		in, err := startInstance(s.h.log.Named(s.name), s.h.sums, s.path, s.h.startTimeout, s.h.sockDir)
		s.mu.Lock()
		if err == nil && s.closed {
			s.mu.Unlock()
			in.kill()
			s.mu.Lock()
			err = ErrClosed
			in = nil
		}
		s.cur, s.startErr, s.starting = in, err, nil
		s.mu.Unlock()
		if err != nil {
			s.h.log.Error("strategy plugin failed to start", "strategy", s.name, "path", s.path, "error", err)
		} else {
			s.h.log.Info("strategy plugin started", "strategy", s.name, "pid", in.pid, "sha256", in.sha256)
		}
		close(ch)
	}()
	return ch
}

// discard kills in if it is still the current process, counts a restart and
// starts a fresh process in the background, so the next call finds it warm.
func (s *slot) discard(in *instance, reason Reason, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.discardLocked(in, reason, cause)
}

func (s *slot) discardLocked(in *instance, reason Reason, cause error) {
	if s.cur != in || in == nil {
		return // another caller already discarded it
	}
	s.cur = nil
	s.restarts++
	s.h.metrics.PluginRestarted(s.name, string(reason))
	s.h.log.Warn("killing and restarting strategy plugin", "strategy", s.name, "pid", in.pid, "reason", reason, "error", cause)
	s.h.wg.Add(1)
	go func() {
		defer s.h.wg.Done()
		in.kill()
	}()
	if !s.closed {
		s.startLocked()
	}
}

// pid returns the pid of the current process, or 0 when none runs.
func (s *slot) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return 0
	}
	return s.cur.pid
}

// close kills the current process; later acquires fail with ErrClosed.
func (s *slot) close() {
	s.mu.Lock()
	s.closed = true
	in := s.cur
	s.cur = nil
	s.mu.Unlock()
	if in != nil {
		in.kill()
	}
}
