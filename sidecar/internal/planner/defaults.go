package planner

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/discover"
)

// Hardware is where registrations take the values a job leaves 0: slots
// per rank from free GPU memory, link bandwidths from the GPUs and NICs.
// *discover.Cache implements it.
type Hardware interface {
	// Report returns this machine's hardware report, a recent one when
	// fresh is true (slots: free GPU memory changes as jobs load); stale is
	// true when it is an earlier one because a fresh one did not finish
	// before ctx ended.
	Report(ctx context.Context, fresh bool) (r *discover.Report, stale bool, err error)
}

// DefaultSlotMemoryFraction is the share of the smallest free GPU memory
// that automatic slots may fill with expert weights and their gradients; the
// rest is left to activations, the dense model and communication buffers.
const DefaultSlotMemoryFraction = 0.2

// Registrations wait for hardware discovery at most slotsWait when they need
// slots from it, and bandwidthWait when they need only bandwidths (which
// then stay 0 if it is late); the caller's deadline bounds both. Bandwidths
// take any report the cache holds, so they wait only before the first.
const (
	slotsWait     = 5 * time.Second
	bandwidthWait = time.Second
)

// SetHardware makes registrations fill slots_per_rank (when 0) and link
// bandwidths (when 0) from h; memFraction is the share of free GPU memory
// automatic slots may use, in (0, 1]. A nil h turns discovery off: a job
// must then give its slots, and unknown bandwidths stay 0.
func (s *Service) SetHardware(h Hardware, memFraction float64) error {
	if h != nil && !(memFraction > 0 && memFraction <= 1) {
		return fmt.Errorf("slot memory fraction %g: pass a share of free GPU memory in (0, 1], e.g. %g", memFraction, DefaultSlotMemoryFraction)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hw, s.slotMemFraction = h, memFraction
	return nil
}

// applyDefaults returns req with the topology values it left 0 filled in
// from discovery, and one line per value filled. Values the request sets are
// never changed. It leaves slots_per_rank 0 when the rest of the job's shape
// is invalid (validation then names every problem) and fails only when
// slots_per_rank is 0 and discovery cannot supply it.
func (s *Service) applyDefaults(ctx context.Context, req *pb.RegisterJobRequest) (*pb.RegisterJobRequest, []string, error) {
	t := req.GetTopology()
	if t == nil {
		return req, nil, nil
	}
	needSlots := t.GetSlotsPerRank() == 0 && len(req.GetCurrentSlots()) == 0 && autoSlotsInputsValid(req)
	needBW := t.GetIntraNodeBandwidth() == 0 || t.GetInterNodeBandwidth() == 0
	if !needSlots && !needBW {
		return req, nil, nil
	}
	s.mu.RLock()
	hw, frac := s.hw, s.slotMemFraction
	s.mu.RUnlock()
	if hw == nil {
		if needSlots {
			return nil, nil, &ValidationError{Request: "RegisterJobRequest", Problems: []string{
				"topology.slots_per_rank: 0 asks the sidecar to choose from free GPU memory, but its hardware discovery is off (serve --discover=false); set slots_per_rank >= 1",
			}}
		}
		return req, nil, nil
	}
	wait := bandwidthWait
	if needSlots {
		wait = slotsWait
	}
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	rep, stale, err := hw.Report(dctx, needSlots)
	if err != nil {
		if needSlots {
			return nil, nil, &ValidationError{Request: "RegisterJobRequest", Problems: []string{
				fmt.Sprintf("topology.slots_per_rank: 0 asks the sidecar to choose from free GPU memory, but hardware discovery failed (%v); set slots_per_rank >= 1", err),
			}}
		}
		s.log.Warn("hardware discovery failed; link bandwidths stay unknown", "error", err)
		return req, nil, nil
	}
	out := proto.Clone(req).(*pb.RegisterJobRequest)
	nt := out.GetTopology()
	var lines []string
	if needSlots {
		slots, why := autoSlots(rep, req, frac)
		if stale {
			why += " (free memory from an earlier discovery: a fresh one did not finish in time)"
		}
		nt.SlotsPerRank = uint32(slots)
		lines = append(lines, fmt.Sprintf("slots_per_rank = %d: %s", slots, why))
	}
	d := rep.Defaults
	if nt.GetIntraNodeBandwidth() == 0 && d.IntraNodeBandwidth > 0 {
		nt.IntraNodeBandwidth = d.IntraNodeBandwidth
		lines = append(lines, fmt.Sprintf("intra_node_bandwidth = %s: %s", discover.FormatRate(d.IntraNodeBandwidth), d.IntraNodeSource))
	}
	if nt.GetInterNodeBandwidth() == 0 && d.InterNodeBandwidth > 0 {
		nt.InterNodeBandwidth = d.InterNodeBandwidth
		lines = append(lines, fmt.Sprintf("inter_node_bandwidth = %s: %s", discover.FormatRate(d.InterNodeBandwidth), d.InterNodeSource))
	}
	return out, lines, nil
}

// autoSlotsInputsValid reports whether the fields automatic slots read are
// valid: world size, experts per layer, parameter counts and bytes.
func autoSlotsInputsValid(req *pb.RegisterJobRequest) bool {
	n := req.GetTopology().GetWorldSize()
	experts, numel := req.GetExpertsPerLayer(), req.GetExpertParamNumel()
	if n < 1 || n > MaxWorldSize || len(experts) == 0 || len(experts) > MaxLayers ||
		(len(numel) != 1 && len(numel) != len(experts)) {
		return false
	}
	if b := req.GetBytesPerParam(); b < 1 || b > MaxBytesPerParam {
		return false
	}
	for _, e := range experts {
		if e < 1 || e > MaxExperts {
			return false
		}
	}
	for _, x := range numel {
		if x < 1 || x > MaxParamNumel {
			return false
		}
	}
	return true
}

// autoSlots picks slots per rank for a job from rep: what fits in frac of
// the smallest free GPU memory (discover.SuggestSlots, a slot costing one
// expert's weights plus gradients in every layer), raised when needed to
// the fewest slots that hold every layer's experts, and capped at
// MaxSlotsPerRank. The inputs are valid (autoSlotsInputsValid).
func autoSlots(rep *discover.Report, req *pb.RegisterJobRequest, frac float64) (int, string) {
	n := int(req.GetTopology().GetWorldSize())
	experts, numel := req.GetExpertsPerLayer(), req.GetExpertParamNumel()
	maxE := 0
	var bytes float64
	for l, e := range experts {
		maxE = max(maxE, int(e))
		x := numel[0]
		if len(numel) > 1 {
			x = numel[l]
		}
		bytes += 2 * float64(x) * float64(req.GetBytesPerParam())
	}
	perLayer := uint64(bytes/float64(len(experts)) + 0.5)
	slots, why := discover.SuggestSlots(rep, max(perLayer, 1), maxE, len(experts), frac)
	if need := (maxE + n - 1) / n; slots < need {
		why += fmt.Sprintf("; raised to %d, the fewest that hold %d experts on %d ranks (GPU memory may be short: set slots_per_rank to choose)", need, maxE, n)
		slots = need
	}
	if slots > MaxSlotsPerRank {
		why += fmt.Sprintf("; capped at the limit of %d", MaxSlotsPerRank)
		slots = MaxSlotsPerRank
	}
	return slots, why
}
