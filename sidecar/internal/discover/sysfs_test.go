package discover

import (
	"slices"
	"testing"
)

func TestCollectNICsFakeSysfs(t *testing.T) {
	root := fakeSysfs(t)
	nics, rdma, warns := collectNICs(fakeLinkList(), root)
	if len(warns) != 0 {
		t.Errorf("warnings: got %v, want none", warns)
	}
	want := []struct {
		name             string
		speed            int
		loopback, virt   bool
		rdma             []string
		firstAddr, state string
	}{
		{"eth0", 25000, false, false, nil, "10.0.0.2/24", "up"},
		{"ib0", 200000, false, false, []string{"mlx5_0"}, "192.168.1.2/24", "up"},
		{"lo", -1, true, true, nil, "127.0.0.1/8", "unknown"},
		{"veth0", 10000, false, true, nil, "", "up"},
	}
	if len(nics) != len(want) {
		t.Fatalf("nics: got %d, want %d", len(nics), len(want))
	}
	for i, w := range want {
		n := nics[i]
		var names []string
		for _, d := range n.RDMA {
			names = append(names, d.Name)
		}
		first := ""
		if len(n.Addresses) > 0 {
			first = n.Addresses[0]
		}
		if n.Name != w.name || n.SpeedMbps != w.speed || n.IsLoopback != w.loopback || n.IsVirtual != w.virt ||
			!slices.Equal(names, w.rdma) || first != w.firstAddr || n.OperState != w.state {
			t.Errorf("nic %d: got %s speed %d loopback %v virtual %v rdma %v addr %q state %q, want %s speed %d loopback %v virtual %v rdma %v addr %q state %q",
				i, n.Name, n.SpeedMbps, n.IsLoopback, n.IsVirtual, names, first, n.OperState,
				w.name, w.speed, w.loopback, w.virt, w.rdma, w.firstAddr, w.state)
		}
	}
	if len(rdma) != 2 || rdma[0].Name != "mlx5_0" || rdma[1].Name != "mlx5_1" {
		t.Fatalf("rdma devices: got %+v, want mlx5_0 and mlx5_1", rdma)
	}
	wantPorts := []RDMAPort{
		{Port: 1, State: "ACTIVE", RateGbps: 200, LinkLayer: "InfiniBand"},
		{Port: 2, State: "DOWN", RateGbps: 10},
	}
	if !slices.Equal(rdma[0].Ports, wantPorts) || !slices.Equal(rdma[0].NetDevs, []string{"ib0"}) {
		t.Errorf("mlx5_0: got ports %+v netdevs %v, want %+v and [ib0]", rdma[0].Ports, rdma[0].NetDevs, wantPorts)
	}
	if len(rdma[1].NetDevs) != 0 {
		t.Errorf("mlx5_1 netdevs: got %v, want none", rdma[1].NetDevs)
	}
}

func TestCollectNICsFailures(t *testing.T) {
	nics, rdma, warns := collectNICs(fakeLinks{err: errFake}, t.TempDir())
	if len(nics) != 0 || len(rdma) != 0 {
		t.Errorf("got %d nics, %d rdma devices, want none", len(nics), len(rdma))
	}
	if len(warns) != 1 || warns[0] != "listing network interfaces: fake failure" {
		t.Errorf("warnings: got %q, want the listing failure", warns)
	}
}

func TestParseRate(t *testing.T) {
	cases := []struct {
		in   string
		want float64
	}{
		{"100 Gb/sec (4X EDR)", 100},
		{"25 Gb/sec (1X EDR)", 25},
		{"2.5 Gb/sec (1X SDR)", 2.5},
		{"", 0},
		{"fast", 0},
		{"100 Mb/sec", 0},
		{"-4 Gb/sec", 0},
	}
	for _, tc := range cases {
		if got := parseRate(tc.in); got != tc.want {
			t.Errorf("parseRate(%q): got %g, want %g", tc.in, got, tc.want)
		}
	}
}

func TestParsePortState(t *testing.T) {
	cases := map[string]string{"4: ACTIVE": "ACTIVE", "1: DOWN": "DOWN", "ACTIVE": "ACTIVE", "": ""}
	for in, want := range cases {
		if got := parsePortState(in); got != want {
			t.Errorf("parsePortState(%q): got %q, want %q", in, got, want)
		}
	}
}

func TestReadSpeed(t *testing.T) {
	root := t.TempDir()
	writeFile(t, root, "class/net/a/speed", "1000\n")
	writeFile(t, root, "class/net/b/speed", "-1\n")
	writeFile(t, root, "class/net/c/speed", "garbage")
	cases := map[string]int{"a": 1000, "b": -1, "c": -1, "missing": -1}
	for name, want := range cases {
		if got := readSpeed(root, name); got != want {
			t.Errorf("readSpeed(%q): got %d, want %d", name, got, want)
		}
	}
}
