package host

import (
	"errors"
	"fmt"
)

// Reason says why a strategy call produced no usable plan. It is the value of
// the "reason" label of the restart, rejection and fallback metrics.
type Reason string

// The reasons a strategy call fails.
const (
	// ReasonUnavailable: the plugin could not be started (missing binary,
	// refused checksum, failed handshake).
	ReasonUnavailable Reason = "unavailable"
	// ReasonCrash: the plugin process died before or during the call.
	ReasonCrash Reason = "crash"
	// ReasonTimeout: the plugin did not answer within the plugin timeout.
	ReasonTimeout Reason = "timeout"
	// ReasonError: the plugin answered with an error.
	ReasonError Reason = "error"
	// ReasonLayerCount: the plan has a different number of layers than asked.
	ReasonLayerCount Reason = "layer_count"
	// ReasonInvalidSlots: a layer's placement failed sdk.ValidateSlots.
	ReasonInvalidSlots Reason = "invalid_slots"
	// ReasonCanceled: the caller gave up before the plugin answered; the
	// plugin is not blamed.
	ReasonCanceled Reason = "canceled"
)

// ErrClosed is returned by calls on a Host after Close.
var ErrClosed = errors.New("plugin host is closed")

// ErrUnknownStrategy wraps every lookup of a strategy with no binary in the
// plugins directory.
var ErrUnknownStrategy = errors.New("unknown strategy")

// ErrChecksum wraps every refusal of a plugin binary whose SHA-256 does not
// match SHA256SUMS or the hash pinned at its first load.
var ErrChecksum = errors.New("plugin checksum refused")

// Failure is the error of a strategy call that produced no usable plan.
type Failure struct {
	Strategy string
	Reason   Reason
	Err      error
}

func (f *Failure) Error() string {
	return fmt.Sprintf("strategy %q: %s: %v", f.Strategy, f.Reason, f.Err)
}

func (f *Failure) Unwrap() error { return f.Err }
