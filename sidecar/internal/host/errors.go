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
	// failed handshake).
	ReasonUnavailable Reason = "unavailable"
	// ReasonRefused: the plugin's binary does not have the SHA-256 trusted
	// for it (see Refusal); it is not started.
	ReasonRefused Reason = "refused"
	// ReasonCrash: the plugin process died before or during the call.
	ReasonCrash Reason = "crash"
	// ReasonTimeout: the plugin did not answer within the plugin timeout.
	ReasonTimeout Reason = "timeout"
	// ReasonError: the plugin answered with an error. The process keeps
	// serving: an error is an answer, not a fault of the process.
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

// The reasons of a Refusal, the "reason" label of
// swiftmoe_plugin_refused_total.
const (
	// RefusedChecksum: the binary's SHA-256 differs from the one trusted
	// (listed in SHA256SUMS, or pinned).
	RefusedChecksum = "checksum"
	// RefusedNotListed: a SHA256SUMS file exists and does not list the binary.
	RefusedNotListed = "not_listed"
	// RefusedPinConflict: a job first saw another digest than the one this
	// host pinned for the plugin.
	RefusedPinConflict = "pin_conflict"
)

// Refusal is the error of a plugin binary refused for its SHA-256. It wraps
// ErrChecksum; its message names the digests and the fix.
type Refusal struct {
	Strategy string
	// Reason is RefusedChecksum, RefusedNotListed or RefusedPinConflict.
	Reason string
	Msg    string
}

func (r *Refusal) Error() string { return fmt.Sprintf("%v: %s", ErrChecksum, r.Msg) }

func (r *Refusal) Unwrap() error { return ErrChecksum }

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
