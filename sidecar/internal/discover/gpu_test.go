package discover

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestCollectGPUsTwoNVLinkPeers(t *testing.T) {
	src := twoNVLinkGPUs()
	gpus, status, warns := collectGPUs(src)
	if !status.Available || status.DriverVersion != "999.1" {
		t.Fatalf("status: got %+v, want available with driver 999.1", status)
	}
	if len(warns) != 0 {
		t.Errorf("warnings: got %v, want none", warns)
	}
	if src.shutdown != 1 {
		t.Errorf("shutdown calls: got %d, want 1", src.shutdown)
	}
	if len(gpus) != 2 {
		t.Fatalf("gpus: got %d, want 2", len(gpus))
	}
	want := []struct {
		bus   string
		peers []int
		free  uint64
	}{
		{"00000000:1b:00", []int{1}, 70 << 30},
		{"00000000:43:00", []int{0}, 60 << 30},
	}
	for i, w := range want {
		g := gpus[i]
		if g.Index != i || g.PCIBusID != w.bus || !slices.Equal(g.NVLinkPeers, w.peers) || g.MemoryFreeBytes != w.free {
			t.Errorf("gpu %d: got index %d bus %q peers %v free %d, want index %d bus %q peers %v free %d",
				i, g.Index, g.PCIBusID, g.NVLinkPeers, g.MemoryFreeBytes, i, w.bus, w.peers, w.free)
		}
		if g.NVLinkLinks != 18 || g.NVLinkVersion != 4 {
			t.Errorf("gpu %d links: got %d of version %d, want 18 of version 4", i, g.NVLinkLinks, g.NVLinkVersion)
		}
	}
}

func TestNVLinkPeers(t *testing.T) {
	gpu := func(bus string, links []NVLink) fakeGPU { return fakeGPU{bus: bus, links: links} }
	cases := []struct {
		name string
		devs []fakeGPU
		want [][]int
	}{
		{
			name: "no nvlink",
			devs: []fakeGPU{gpu("0:1:0", nil), gpu("0:2:0", nil)},
			want: [][]int{{}, {}},
		},
		{
			name: "one-sided direct link still pairs both",
			devs: []fakeGPU{gpu("0:1:0", nvlinks(2, 3, "0:2:0")), gpu("0:2:0", nil), gpu("0:3:0", nil)},
			want: [][]int{{1}, {0}, {}},
		},
		{
			name: "nvswitch joins every gpu linked to it",
			devs: []fakeGPU{
				gpu("0:1:0", append(nvlinks(1, 4, "0:a0:0"), nvlinks(1, 4, "0:a1:0")...)),
				gpu("0:2:0", nvlinks(2, 4, "0:a0:0")),
				gpu("0:3:0", nvlinks(2, 4, "0:a1:0")),
				gpu("0:4:0", nil),
			},
			want: [][]int{{1, 2}, {0}, {0}, {}},
		},
		{
			name: "link to itself is ignored",
			devs: []fakeGPU{gpu("0:1:0", nvlinks(1, 4, "0:1:0"))},
			want: [][]int{{}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gpus, _, _ := collectGPUs(&fakeGPUSource{devs: tc.devs})
			for i, w := range tc.want {
				if !slices.Equal(gpus[i].NVLinkPeers, w) {
					t.Errorf("gpu %d peers: got %v, want %v", i, gpus[i].NVLinkPeers, w)
				}
			}
		})
	}
}

func TestCollectGPUsNVMLUnavailable(t *testing.T) {
	src := &fakeGPUSource{initErr: fmt.Errorf("%w: libnvidia-ml.so.1 not found", ErrNVMLUnavailable)}
	gpus, status, warns := collectGPUs(src)
	if len(gpus) != 0 || status.Available || !strings.Contains(status.Reason, "libnvidia-ml.so.1 not found") {
		t.Fatalf("got %d gpus, status %+v; want 0 gpus, unavailable with the reason", len(gpus), status)
	}
	if src.shutdown != 0 || len(warns) != 0 {
		t.Errorf("got %d shutdown calls and warnings %v, want none after a failed init", src.shutdown, warns)
	}
	gpus, status, _ = collectGPUs(nil)
	if len(gpus) != 0 || status.Available || status.Reason == "" {
		t.Errorf("nil source: got %d gpus, status %+v; want 0 and a reason", len(gpus), status)
	}
}

func TestCollectGPUsPartialFailure(t *testing.T) {
	src := twoNVLinkGPUs()
	src.devs = append(src.devs, fakeGPU{name: "third", bus: "0:99:0", linkErr: errFake})
	src.devErr = map[int]error{0: errors.New("GPU is lost")}
	gpus, status, warns := collectGPUs(src)
	if !status.Available || len(gpus) != 2 {
		t.Fatalf("got %d gpus (available %v), want the 2 readable ones", len(gpus), status.Available)
	}
	if gpus[0].Index != 1 || gpus[1].Index != 2 || gpus[1].Name != "third" {
		t.Errorf("got indices %d,%d name %q, want 1,2 and third", gpus[0].Index, gpus[1].Index, gpus[1].Name)
	}
	joined := strings.Join(warns, "; ")
	if !strings.Contains(joined, "gpu 0: GPU is lost") || !strings.Contains(joined, "gpu 2 nvlink: fake failure") {
		t.Errorf("warnings: got %q, want the lost GPU 0 and GPU 2's nvlink failure", joined)
	}
	// GPU 1 links to GPU 0's bus, which was not read: no GPU peer, so it
	// counts as a switch that only GPU 1 reaches.
	if len(gpus[0].NVLinkPeers) != 0 {
		t.Errorf("gpu 1 peers: got %v, want none", gpus[0].NVLinkPeers)
	}
}

func TestNormBusID(t *testing.T) {
	cases := map[string]string{
		"00000000:3B:00.0":      "00000000:3b:00",
		"00000000:3b:00":        "00000000:3b:00",
		" 0000:01:00.0\x00\x00": "0000:01:00",
		"":                      "",
	}
	for in, want := range cases {
		if got := normBusID(in); got != want {
			t.Errorf("normBusID(%q): got %q, want %q", in, got, want)
		}
	}
}
