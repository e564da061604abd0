package host

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// supervisor owns the process, if any, that serves one strategy. At most one
// process per strategy is current; a failed one is discarded (killed in the
// background) and a fresh one started for the next call.
type supervisor struct {
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
func (sv *supervisor) acquire(ctx context.Context) (*instance, error) {
	sv.mu.Lock()
	if sv.closed {
		sv.mu.Unlock()
		return nil, ErrClosed
	}
	if sv.cur != nil {
		if !sv.cur.exited() {
			in := sv.cur
			sv.mu.Unlock()
			return in, nil
		}
		sv.discardLocked(sv.cur, ReasonCrash, errors.New("plugin process exited between calls"))
	}
	ch := sv.startLocked()
	sv.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for plugin %s to start: %w", sv.name, ctx.Err())
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.cur == nil {
		if sv.startErr == nil {
			return nil, ErrClosed
		}
		return nil, sv.startErr
	}
	return sv.cur, nil
}

// startLocked begins a start in the background unless one is in flight and
// returns the channel closed when it ends. sv.mu must be held.
func (sv *supervisor) startLocked() chan struct{} {
	if sv.starting != nil {
		return sv.starting
	}
	ch := make(chan struct{})
	sv.starting = ch
	sv.h.wg.Add(1)
	go func() {
		defer sv.h.wg.Done()
		in, err := startInstance(sv.h.log.Named(sv.name), sv.h.sums, sv.name, sv.path, sv.h.startTimeout, sv.h.sockDir)
		sv.mu.Lock()
		if err == nil && sv.closed {
			sv.mu.Unlock()
			in.kill()
			sv.mu.Lock()
			err = ErrClosed
			in = nil
		}
		sv.cur, sv.startErr, sv.starting = in, err, nil
		sv.mu.Unlock()
		var refusal *Refusal
		switch {
		case errors.As(err, &refusal):
			sv.h.metrics.PluginRefused(sv.name, refusal.Reason)
			sv.h.log.Error("strategy plugin refused: its binary is not the one trusted", "strategy", sv.name, "path", sv.path, "reason", refusal.Reason, "error", err)
		case err != nil:
			sv.h.log.Error("strategy plugin failed to start", "strategy", sv.name, "path", sv.path, "error", err)
		default:
			sv.h.log.Info("strategy plugin started", "strategy", sv.name, "pid", in.pid, "sha256", in.sha256)
		}
		close(ch)
	}()
	return ch
}

// discard kills in if it is still the current process, counts a restart and
// starts a fresh process in the background, so the next call finds it warm.
func (sv *supervisor) discard(in *instance, reason Reason, cause error) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	sv.discardLocked(in, reason, cause)
}

func (sv *supervisor) discardLocked(in *instance, reason Reason, cause error) {
	if sv.cur != in || in == nil {
		return // another caller already discarded it
	}
	sv.cur = nil
	sv.restarts++
	sv.h.metrics.PluginRestarted(sv.name, string(reason))
	sv.h.log.Warn("killing and restarting strategy plugin", "strategy", sv.name, "pid", in.pid, "reason", reason, "error", cause)
	sv.h.wg.Add(1)
	go func() {
		defer sv.h.wg.Done()
		in.kill()
	}()
	if !sv.closed {
		sv.startLocked()
	}
}

// pid returns the pid of the current process, or 0 when none runs.
func (sv *supervisor) pid() int {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.cur == nil {
		return 0
	}
	return sv.cur.pid
}

// close kills the current process; later acquires fail with ErrClosed.
func (sv *supervisor) close() {
	sv.mu.Lock()
	sv.closed = true
	in := sv.cur
	sv.cur = nil
	sv.mu.Unlock()
	if in != nil {
		in.kill()
	}
}
