package sdk

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/internal/transport"
)

// seenCurrent records the current placement each Plan call saw, and plans
// rotate's placement.
type seenCurrent struct {
	mu   sync.Mutex
	seen [][][]int
}

func (s *seenCurrent) Info() Info { return rotate{}.Info() }

func (s *seenCurrent) Plan(ctx context.Context, req *Request) (*Response, error) {
	cur := make([][]int, len(req.Layers))
	for i, l := range req.Layers {
		cur[i] = slices.Clone(l.Current)
	}
	s.mu.Lock()
	s.seen = append(s.seen, cur)
	s.mu.Unlock()
	return rotate{}.Plan(ctx, req)
}

// wire is what the plugin received: each request's current_ref and how
// many current slots came with it.
type wire struct {
	mu    sync.Mutex
	refs  []uint64
	slots []int
}

func (w *wire) interceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if r, ok := req.(*pb.StrategyPlanRequest); ok {
		n := 0
		for _, l := range r.GetLayers() {
			n += len(l.GetCurrentSlots())
		}
		w.mu.Lock()
		w.refs, w.slots = append(w.refs, r.GetCurrentRef()), append(w.slots, n)
		w.mu.Unlock()
	}
	return h(ctx, req)
}

// pairOver serves srv over an in-process connection and returns its client.
func pairOver(t *testing.T, srv pb.StrategyServer, w *wire) *GRPCClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(grpc.UnaryInterceptor(w.interceptor))
	pb.RegisterStrategyServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &GRPCClient{Client: pb.NewStrategyClient(conn)}
}

func TestCurrentSentByReference(t *testing.T) {
	impl := &seenCurrent{}
	srv := &GRPCServer{Impl: impl}
	w := &wire{}
	client := pairOver(t, srv, w)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := sampleRequest()
	req.Options = nil
	req.Iteration = 0 // rotate plans rotations 1, 2, ...: never the static layout
	full := len(req.Layers[0].Current) + len(req.Layers[1].Current)
	plan := func(cur [][]int) *Response {
		t.Helper()
		for i := range req.Layers {
			req.Layers[i].Current = cur[i]
		}
		req.Iteration++
		resp, err := client.Plan(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	static := [][]int{slices.Clone(req.Layers[0].Current), slices.Clone(req.Layers[1].Current)}

	r1 := plan(static)    // nothing kept yet: the slots go
	r2 := plan(r1.Layers) // the plugin's own answer: named, not sent
	plan(static)          // something else: sent
	plan(r2.Layers)       // an older answer still kept: named
	if want := []uint64{0, 1, 0, 2}; !slices.Equal(w.refs, want) {
		t.Errorf("current_ref on the wire %v, want %v", w.refs, want)
	}
	if want := []int{full, 0, full, 0}; !slices.Equal(w.slots, want) {
		t.Errorf("current slots on the wire %v, want %v", w.slots, want)
	}
	// Whatever went on the wire, the strategy saw the placement in force.
	want := [][][]int{static, r1.Layers, static, r2.Layers}
	for i := range want {
		for l := range want[i] {
			if !slices.Equal(impl.seen[i][l], want[i][l]) {
				t.Errorf("call %d layer %d: the strategy saw current %v, want %v", i, l, impl.seen[i][l], want[i][l])
			}
		}
	}

	// The plugin evicts what it kept once it has named KeptByPlugin newer
	// responses that this client never kept (here those of another client
	// on the same connection, as when calls are given up on): the named
	// request is refused and sent again with its slots, transparently.
	other := &GRPCClient{Client: client.Client}
	for range transport.KeptByPlugin {
		if _, err := other.Plan(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	r5 := plan(r2.Layers)
	if got := w.refs[len(w.refs)-2:]; !slices.Equal(got, []uint64{2, 0}) {
		t.Errorf("after the plugin forgot: current_ref %v, want a reference then the slots", got)
	}
	if got := impl.seen[len(impl.seen)-1]; !slices.Equal(got[0], r2.Layers[0]) || !slices.Equal(got[1], r2.Layers[1]) {
		t.Errorf("after the retry the strategy saw %v, want %v", got, r2.Layers)
	}

	// The sidecar keeps copies: changing a response it returned does not
	// make a changed placement pass for the kept one.
	r5.Layers[0][0], r5.Layers[0][1] = r5.Layers[0][1], r5.Layers[0][0]
	plan(r5.Layers)
	if got := w.refs[len(w.refs)-1]; got != 0 {
		t.Errorf("a changed placement was named by reference %d", got)
	}
	if got := impl.seen[len(impl.seen)-1][0]; !slices.Equal(got, r5.Layers[0]) {
		t.Errorf("the strategy saw %v, want the changed placement %v", got, r5.Layers[0])
	}
}

// oldPlugin answers like a plugin built before responses were named.
type oldPlugin struct {
	pb.UnimplementedStrategyServer
}

func (oldPlugin) Plan(ctx context.Context, req *pb.StrategyPlanRequest) (*pb.StrategyPlanResponse, error) {
	resp, err := rotate{}.Plan(ctx, RequestFromProto(req))
	if err != nil {
		return nil, err
	}
	return ResponseToProto(resp), nil // response_id 0
}

func TestCurrentAlwaysSentToAPluginThatNamesNothing(t *testing.T) {
	w := &wire{}
	client := pairOver(t, oldPlugin{}, w)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := sampleRequest()
	req.Options = nil
	for range 3 {
		resp, err := client.Plan(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for i := range req.Layers {
			req.Layers[i].Current = resp.Layers[i]
		}
	}
	if !slices.Equal(w.refs, []uint64{0, 0, 0}) || slices.Contains(w.slots, 0) {
		t.Errorf("an old plugin was sent references %v / slot counts %v", w.refs, w.slots)
	}
}
