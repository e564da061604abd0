package discover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// readSpeed returns class/net/NAME/speed in Mb/s, or -1 when the file is
// missing, unreadable (the kernel answers EINVAL for links without a speed)
// or not a positive number.
func readSpeed(root, name string) int {
	b, err := os.ReadFile(filepath.Join(root, "class", "net", name, "speed"))
	if err != nil {
		return -1
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || v <= 0 {
		return -1
	}
	return v
}

// hasDevice reports whether a device (PCI, virtio, ...) backs the interface;
// virtual interfaces (loopback, bridges, veths, ifb) have none.
func hasDevice(root, name string) bool {
	_, err := os.Stat(filepath.Join(root, "class", "net", name, "device"))
	return err == nil
}

// readRDMA lists class/infiniband/*: the network interfaces each device is
// bound to (device/net/*) and its ports (ports/N/{state,rate,link_layer}).
// A missing class/infiniband is no devices, not an error.
func readRDMA(root string) ([]RDMADevice, error) {
	dir := filepath.Join(root, "class", "infiniband")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return []RDMADevice{}, nil
	}
	if err != nil {
		return []RDMADevice{}, fmt.Errorf("reading %s: %w", dir, err)
	}
	devs := []RDMADevice{}
	for _, e := range entries {
		d := RDMADevice{Name: e.Name(), NetDevs: []string{}, Ports: []RDMAPort{}}
		base := filepath.Join(dir, e.Name())
		if nets, err := os.ReadDir(filepath.Join(base, "device", "net")); err == nil {
			for _, n := range nets {
				d.NetDevs = append(d.NetDevs, n.Name())
			}
		}
		ports, _ := os.ReadDir(filepath.Join(base, "ports"))
		for _, p := range ports {
			num, err := strconv.Atoi(p.Name())
			if err != nil {
				continue
			}
			pdir := filepath.Join(base, "ports", p.Name())
			d.Ports = append(d.Ports, RDMAPort{
				Port:      num,
				State:     parsePortState(readTrim(filepath.Join(pdir, "state"))),
				RateGbps:  parseRate(readTrim(filepath.Join(pdir, "rate"))),
				LinkLayer: readTrim(filepath.Join(pdir, "link_layer")),
			})
		}
		slices.SortFunc(d.Ports, func(a, b RDMAPort) int { return a.Port - b.Port })
		devs = append(devs, d)
	}
	return devs, nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// parsePortState turns "4: ACTIVE" into "ACTIVE".
func parsePortState(s string) string {
	if _, after, ok := strings.Cut(s, ":"); ok {
		return strings.TrimSpace(after)
	}
	return s
}

// parseRate turns "100 Gb/sec (4X EDR)" into 100; 0 when it cannot.
func parseRate(s string) float64 {
	f := strings.Fields(s)
	if len(f) < 2 || !strings.HasPrefix(f[1], "Gb/s") {
		return 0
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil || v < 0 {
		return 0
	}
	return v
}
