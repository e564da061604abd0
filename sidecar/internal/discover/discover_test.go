package discover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func fakeDiscoverer(t *testing.T, gpus GPUSource) *Discoverer {
	return &Discoverer{
		GPUs:      gpus,
		Links:     fakeLinkList(),
		SysfsRoot: fakeSysfs(t),
		Hostname:  func() (string, error) { return "node-7", nil },
	}
}

func TestDiscoverFakeHardware(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := fakeDiscoverer(t, twoNVLinkGPUs()).Discover(ctx)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if r.Hostname != "node-7" || r.GPUCount != 2 || !r.NVML.Available || len(r.NICs) != 4 || len(r.RDMADevices) != 2 {
		t.Fatalf("got host %q, %d gpus (nvml %v), %d nics, %d rdma; want node-7, 2, true, 4, 2",
			r.Hostname, r.GPUCount, r.NVML.Available, len(r.NICs), len(r.RDMADevices))
	}
	intra, inter := r.LinkBandwidth()
	if intra != 18*25e9 || inter != 200e9/8 {
		t.Errorf("bandwidth: got intra %g inter %g, want %g (18 NVLink4 links) and %g (200 Gb/s RDMA)", intra, inter, 18*25e9, 200e9/8)
	}
	if r.Defaults.IntraNodeBandwidth != intra || r.Defaults.InterNodeBandwidth != inter ||
		!strings.Contains(r.Defaults.IntraNodeSource, "NVLink4 x18") || !strings.Contains(r.Defaults.InterNodeSource, "mlx5_0 port 1") {
		t.Errorf("defaults: got %+v, want the same figures with NVLink4 and mlx5_0 sources", r.Defaults)
	}
	slots, reason := SuggestSlots(r, 1<<30, 64, 10, 0.5)
	// GPU 1 has 60 GiB free: 30 GiB / (10 layers * 1 GiB) = 3.
	if slots != 3 || !strings.Contains(reason, "GPU 1") {
		t.Errorf("SuggestSlots: got %d (%q), want 3 from GPU 1", slots, reason)
	}
}

func TestReportJSONFieldNames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := fakeDiscoverer(t, twoNVLinkGPUs()).Discover(ctx)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	if got := m["gpu_count"]; got != float64(2) {
		t.Errorf("gpu_count: got %v, want 2", got)
	}
	if got := m["nvml"].(map[string]any)["available"]; got != true {
		t.Errorf("nvml.available: got %v, want true", got)
	}
	g0 := m["gpus"].([]any)[0].(map[string]any)
	for _, k := range []string{"index", "name", "uuid", "memory_total_bytes", "memory_free_bytes", "nvlink_peers"} {
		if _, ok := g0[k]; !ok {
			t.Errorf("gpus[0] lacks %q: got keys of %s", k, b)
		}
	}
	n0 := m["nics"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "mac", "mtu", "oper_state", "speed_mbps", "addresses", "is_loopback", "rdma"} {
		if _, ok := n0[k]; !ok {
			t.Errorf("nics[0] lacks %q", k)
		}
	}
	if got := m["defaults"].(map[string]any)["inter_node_bandwidth"]; got != 200e9/8 {
		t.Errorf("defaults.inter_node_bandwidth: got %v, want %g", got, 200e9/8)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("decoding the report back: %v", err)
	}
	if i1, e1 := back.LinkBandwidth(); i1 != 18*25e9 || e1 != 200e9/8 {
		t.Errorf("LinkBandwidth of a decoded report: got %g, %g, want %g, %g", i1, e1, 18*25e9, 200e9/8)
	}
}

func TestLinkBandwidthFallbacks(t *testing.T) {
	cases := []struct {
		name      string
		r         Report
		intra     float64
		inter     float64
		intraHint string
		interHint string
	}{
		{
			name:      "nothing known",
			r:         Report{NICs: []NIC{{Name: "lo", IsLoopback: true, IsVirtual: true, OperState: "unknown", SpeedMbps: -1}}},
			intraHint: "no GPU", interHint: "unknown",
		},
		{
			name: "pcie when a gpu lacks nvlink, nic speed without rdma",
			r: Report{
				GPUs: []GPU{
					{Index: 0, NVLinkLinks: 4, NVLinkVersion: 3, NVLinkPeers: []int{1}, PCIeGeneration: 4, PCIeWidth: 16},
					{Index: 1, PCIeGeneration: 4, PCIeWidth: 8},
				},
				NICs: []NIC{
					{Name: "eth0", OperState: "up", SpeedMbps: 100000},
					{Name: "eth1", OperState: "down", SpeedMbps: 400000},
					{Name: "br0", OperState: "up", IsVirtual: true, SpeedMbps: 800000},
				},
				RDMADevices: []RDMADevice{{Name: "mlx5_0", Ports: []RDMAPort{{Port: 1, State: "DOWN", RateGbps: 400}}}},
			},
			intra: 1.969e9 * 8, inter: 100000 * 1e6 / 8,
			intraHint: "PCIe gen4 x8 (slowest GPU 1)", interHint: "NIC eth0",
		},
		{
			name:      "single gpu uses pcie",
			r:         Report{GPUs: []GPU{{Index: 0, NVLinkLinks: 18, NVLinkVersion: 4, PCIeGeneration: 5, PCIeWidth: 16}}},
			intra:     3.938e9 * 16,
			intraHint: "PCIe gen5 x16", interHint: "unknown",
		},
		{
			name:      "unknown pcie",
			r:         Report{GPUs: []GPU{{Index: 0}}},
			intraHint: "PCIe link of GPU 0 not reported", interHint: "unknown",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			intra, inter := tc.r.LinkBandwidth()
			d := tc.r.bandwidthDefaults()
			if intra != tc.intra || inter != tc.inter {
				t.Errorf("got intra %g inter %g, want %g and %g", intra, inter, tc.intra, tc.inter)
			}
			if !strings.Contains(d.IntraNodeSource, tc.intraHint) || !strings.Contains(d.InterNodeSource, tc.interHint) {
				t.Errorf("sources: got %q and %q, want %q and %q", d.IntraNodeSource, d.InterNodeSource, tc.intraHint, tc.interHint)
			}
		})
	}
}

func TestWriteText(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := fakeDiscoverer(t, twoNVLinkGPUs()).Discover(ctx)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	out := buf.String()
	for _, want := range []string{
		"host node-7", "NVML: available, driver 999.1", "GPUs: 2",
		"gpu 0  NVIDIA H100 80GB HBM3  GPU-aaaa  memory 70.0 GiB free of 80.0 GiB",
		"NVLink4 x18, peers [1]", "ib0", "[rdma mlx5_0]", "[loopback, virtual]",
		"port 1  ACTIVE  200 Gb/s  InfiniBand", "intra-node 450.0 GB/s", "inter-node 25.0 GB/s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q; got:\n%s", want, out)
		}
	}
	if err := r.WriteText(failWriter{}); err == nil || !strings.Contains(err.Error(), "writing discovery summary") {
		t.Errorf("WriteText to a failing writer: got %v, want a wrapped write error", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errFake }

func TestDiscoverHonoursContext(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	d := fakeDiscoverer(t, &fakeGPUSource{block: block})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	r, err := d.Discover(ctx)
	if r != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got report %v, error %v; want no report and DeadlineExceeded", r, err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Discover returned after %v, want about the 100ms deadline", el)
	}
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if _, err := d.Discover(done); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v, want context.Canceled", err)
	}
}

func TestDiscoverNoSources(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := (&Discoverer{SysfsRoot: t.TempDir()}).Discover(ctx)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if r.GPUCount != 0 || r.NVML.Available || r.GPUs == nil || r.NICs == nil {
		t.Errorf("got %+v, want zero GPUs, NVML unavailable, empty (non-nil) lists", r)
	}
}

// TestDiscoverRealMachine runs the real sources. On a machine without
// NVIDIA's library it must report zero GPUs with the reason; on a GPU
// machine every GPU must have a name, UUID and memory. Loopback is always
// present.
func TestDiscoverRealMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := Discover(ctx)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if r.GPUCount != len(r.GPUs) {
		t.Errorf("gpu_count %d, but %d gpus listed", r.GPUCount, len(r.GPUs))
	}
	if !r.NVML.Available {
		if r.GPUCount != 0 || r.NVML.Reason == "" {
			t.Errorf("NVML unavailable: got %d gpus and reason %q, want 0 and a reason", r.GPUCount, r.NVML.Reason)
		}
		t.Logf("NVML unavailable: %s", r.NVML.Reason)
	}
	for _, g := range r.GPUs {
		if g.Name == "" || g.UUID == "" || g.MemoryTotalBytes == 0 || g.MemoryFreeBytes > g.MemoryTotalBytes {
			t.Errorf("gpu %d: got %+v, want a name, UUID and free <= total > 0", g.Index, g)
		}
	}
	i := slices.IndexFunc(r.NICs, func(n NIC) bool { return n.IsLoopback })
	if i < 0 {
		t.Fatalf("no loopback NIC among %+v", r.NICs)
	}
	lo := r.NICs[i]
	if lo.Name != "lo" || !slices.Contains(lo.Addresses, "127.0.0.1/8") || !lo.IsVirtual {
		t.Errorf("loopback: got %+v, want lo with 127.0.0.1/8, virtual", lo)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	t.Logf("real machine:\n%s", buf.String())
}
