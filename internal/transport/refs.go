package transport

import (
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// A planning request carries the placement in force, and that placement is
// almost always the plugin's own previous answer: for a large job it is over
// half of the request's bytes. So both ends of the adapter pair keep their
// last few responses. The plugin names each response (response_id); the
// sidecar, when every layer's current placement equals a response it kept,
// sends that name (current_ref) instead of the slots. Both caches live and
// die with one plugin connection. A plugin that no longer holds the named
// response (evicted) answers FailedPrecondition, and the sidecar resends the
// slots. A plugin built before this answers with response_id 0 and is never
// sent a reference.

// KeptBySidecar and KeptByPlugin are how many responses each end keeps: a
// job needs one, so this serves several jobs on one plugin. The plugin keeps
// a few more than the sidecar asks about, so that responses received out of
// order do not make misses.
const (
	KeptBySidecar = 8
	KeptByPlugin  = KeptBySidecar + 4
)

// staleRefMessage marks the plugin's answer to an unknown current_ref.
const staleRefMessage = "current_ref names no response this plugin keeps; send current_slots"

// IsStaleRef reports whether err is a plugin's answer to a current_ref it no
// longer holds: the request must be sent again with its current slots.
func IsStaleRef(err error) bool {
	return status.Code(err) == codes.FailedPrecondition && status.Convert(err).Message() == staleRefMessage
}

// kept is a response id and its placements.
type kept[T any] struct {
	id     uint64
	layers [][]T
}

// keptList holds the newest responses, newest last.
type keptList[T any] struct {
	mu    sync.Mutex
	items []kept[T]
}

// add keeps a response, dropping the oldest beyond limit.
func (k *keptList[T]) add(id uint64, layers [][]T, limit int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.items) == limit {
		k.items = slices.Delete(k.items, 0, 1)
	}
	k.items = append(k.items, kept[T]{id, layers})
}

// SentResponses is the plugin's end: the responses it sent, by id. The zero
// value is ready for use; it is safe for concurrent use.
type SentResponses struct {
	keptList[uint32]
	next uint64
}

// Name assigns the next id to a response's layers (wire form, not changed
// after sending) and keeps them.
func (s *SentResponses) Name(layers []*pb.StrategyLayerOutput) uint64 {
	s.mu.Lock()
	s.next++
	id := s.next
	s.mu.Unlock()
	ids := make([][]uint32, len(layers))
	for i, l := range layers {
		ids[i] = l.GetSlots()
	}
	s.add(id, ids, KeptByPlugin)
	return id
}

// Resolve fills every layer's current_slots from the response named by
// req.CurrentRef; a FailedPrecondition error that IsStaleRef recognizes when
// it is not kept or does not fit.
func (s *SentResponses) Resolve(req *pb.StrategyPlanRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range s.items {
		if it.id != req.GetCurrentRef() {
			continue
		}
		if len(it.layers) != len(req.GetLayers()) {
			break
		}
		for i, l := range req.GetLayers() {
			l.CurrentSlots = it.layers[i]
		}
		return nil
	}
	return status.Error(codes.FailedPrecondition, staleRefMessage)
}

// ReceivedResponses is the sidecar's end: copies of the responses it
// received. The zero value is ready for use; it is safe for concurrent use.
type ReceivedResponses struct{ keptList[int] }

// Keep copies a response's layers (the caller may change the ones it got).
// A response without a name (id 0) is not kept.
func (g *ReceivedResponses) Keep(id uint64, layers [][]int) {
	if id == 0 {
		return
	}
	cp := make([][]int, len(layers))
	for i, l := range layers {
		cp[i] = slices.Clone(l)
	}
	g.add(id, cp, KeptBySidecar)
}

// Find returns the id of a kept response whose placements equal the current
// placement of every one of a request's n layers (current(l) is layer l's),
// newest first; 0 when none does.
func (g *ReceivedResponses) Find(n int, current func(layer int) []int) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := len(g.items) - 1; i >= 0; i-- {
		it := g.items[i]
		if len(it.layers) != n {
			continue
		}
		same := true
		for l := range n {
			if !slices.Equal(it.layers[l], current(l)) {
				same = false
				break
			}
		}
		if same {
			return it.id
		}
	}
	return 0
}
