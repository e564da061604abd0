package discover

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// fakeGPUSource is a GPUSource over fixed devices.
type fakeGPUSource struct {
	initErr  error
	devs     []fakeGPU
	devErr   map[int]error
	shutdown int
	block    chan struct{} // when set, Init waits for it
}

type fakeGPU struct {
	name, uuid, bus string
	total, free     uint64
	links           []NVLink
	linkErr         error
	gen, width      int
}

func (s *fakeGPUSource) Init() error {
	if s.block != nil {
		<-s.block
	}
	return s.initErr
}
func (s *fakeGPUSource) Shutdown() error                { s.shutdown++; return nil }
func (s *fakeGPUSource) DriverVersion() (string, error) { return "999.1", nil }
func (s *fakeGPUSource) Count() (int, error)            { return len(s.devs), nil }
func (s *fakeGPUSource) Device(i int) (GPUDevice, error) {
	if err := s.devErr[i]; err != nil {
		return nil, err
	}
	if i < 0 || i >= len(s.devs) {
		return nil, fmt.Errorf("no device %d", i)
	}
	return s.devs[i], nil
}

func (g fakeGPU) Name() (string, error)     { return g.name, nil }
func (g fakeGPU) UUID() (string, error)     { return g.uuid, nil }
func (g fakeGPU) PCIBusID() (string, error) { return g.bus, nil }
func (g fakeGPU) Memory() (uint64, uint64, error) {
	return g.total, g.free, nil
}
func (g fakeGPU) NVLinks() ([]NVLink, error) { return g.links, g.linkErr }
func (g fakeGPU) PCIe() (int, int, error)    { return g.gen, g.width, nil }

// nvlinks returns n version-v links, all ending at remote.
func nvlinks(n, v int, remote string) []NVLink {
	out := make([]NVLink, n)
	for i := range out {
		out[i] = NVLink{Link: i, Version: v, RemoteBusID: remote}
	}
	return out
}

// twoNVLinkGPUs is two H100s joined by 18 NVLink4 links.
func twoNVLinkGPUs() *fakeGPUSource {
	const gib = 1 << 30
	return &fakeGPUSource{devs: []fakeGPU{
		{name: "NVIDIA H100 80GB HBM3", uuid: "GPU-aaaa", bus: "00000000:1B:00.0", total: 80 * gib, free: 70 * gib,
			links: nvlinks(18, 4, "00000000:43:00"), gen: 5, width: 16},
		{name: "NVIDIA H100 80GB HBM3", uuid: "GPU-bbbb", bus: "00000000:43:00.0", total: 80 * gib, free: 60 * gib,
			links: nvlinks(18, 4, "00000000:1b:00"), gen: 5, width: 16},
	}}
}

type fakeLinks struct {
	links []Link
	err   error
}

func (f fakeLinks) Links() ([]Link, error) { return f.links, f.err }

// writeFile creates path under root with content, making parent folders.
func writeFile(t *testing.T, root, path, content string) {
	t.Helper()
	full := filepath.Join(root, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, root, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, path), 0o755); err != nil {
		t.Fatal(err)
	}
}

// fakeSysfs builds a sysfs tree: eth0 (25 Gb/s, PCI), ib0 bound to mlx5_0
// (one active 200 Gb/s port, one down port), lo (no speed), veth0 (virtual,
// reports 10000), and mlx5_1 bound to nothing.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	writeFile(t, root, "class/net/eth0/speed", "25000\n")
	mkdir(t, root, "class/net/eth0/device")
	writeFile(t, root, "class/net/ib0/speed", "200000\n")
	mkdir(t, root, "class/net/ib0/device")
	mkdir(t, root, "class/net/lo")
	writeFile(t, root, "class/net/veth0/speed", "10000\n")
	mkdir(t, root, "class/infiniband/mlx5_0/device/net/ib0")
	writeFile(t, root, "class/infiniband/mlx5_0/ports/1/state", "4: ACTIVE\n")
	writeFile(t, root, "class/infiniband/mlx5_0/ports/1/rate", "200 Gb/sec (4X HDR)\n")
	writeFile(t, root, "class/infiniband/mlx5_0/ports/1/link_layer", "InfiniBand\n")
	writeFile(t, root, "class/infiniband/mlx5_0/ports/2/state", "1: DOWN\n")
	writeFile(t, root, "class/infiniband/mlx5_0/ports/2/rate", "10 Gb/sec (4X SDR)\n")
	writeFile(t, root, "class/infiniband/mlx5_1/ports/1/state", "1: DOWN\n")
	writeFile(t, root, "class/infiniband/mlx5_1/ports/1/rate", "400 Gb/sec (4X NDR)\n")
	return root
}

func fakeLinkList() fakeLinks {
	return fakeLinks{links: []Link{
		{Name: "lo", MTU: 65536, OperState: "unknown", Loopback: true, Addresses: []string{"127.0.0.1/8", "::1/128"}},
		{Name: "eth0", MAC: "02:00:00:00:00:01", MTU: 9000, OperState: "up", Addresses: []string{"10.0.0.2/24"}},
		{Name: "ib0", MAC: "00:00:10:29:fe:80", MTU: 4092, OperState: "up", Addresses: []string{"192.168.1.2/24"}},
		{Name: "veth0", MAC: "02:00:00:00:00:02", MTU: 1500, OperState: "up"},
	}}
}

var errFake = errors.New("fake failure")
