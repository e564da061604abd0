package transport

import (
	"testing"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

func TestKeptResponsesAreBounded(t *testing.T) {
	var s SentResponses
	for range 3 * KeptByPlugin {
		s.Name([]*pb.StrategyLayerOutput{{Slots: []uint32{0}}})
	}
	if len(s.items) != KeptByPlugin || s.items[0].id != 2*KeptByPlugin+1 {
		t.Fatalf("kept %d responses from id %d; want the newest %d", len(s.items), s.items[0].id, KeptByPlugin)
	}
	var g ReceivedResponses
	for i := range 3 * KeptBySidecar {
		g.Keep(uint64(i+1), [][]int{{i}})
	}
	if len(g.items) != KeptBySidecar {
		t.Fatalf("the sidecar kept %d responses, want %d", len(g.items), KeptBySidecar)
	}
	g.Keep(0, [][]int{{1}}) // unnamed: not kept
	if g.items[len(g.items)-1].id == 0 {
		t.Fatal("an unnamed response was kept")
	}
}
