package discover

import (
	"fmt"
	"slices"
)

// LinkSource lists network interfaces. The real one uses netlink; tests use
// fakes.
type LinkSource interface {
	Links() ([]Link, error)
}

// Link is one network interface as the kernel reports it.
type Link struct {
	Name      string
	MAC       string
	MTU       int
	OperState string
	Loopback  bool
	// Addresses in CIDR form ("10.0.0.2/24", "fe80::1/64").
	Addresses []string
}

// collectNICs joins the links of src with what sysfs under root says about
// them (speed, whether a device backs them, bound RDMA devices).
func collectNICs(src LinkSource, root string) ([]NIC, []RDMADevice, []string) {
	var warns []string
	rdma, err := readRDMA(root)
	if err != nil {
		warns = append(warns, fmt.Sprintf("rdma: %v", err))
	}
	if src == nil {
		return []NIC{}, rdma, append(warns, "no network link source configured")
	}
	links, err := src.Links()
	if err != nil {
		warns = append(warns, fmt.Sprintf("listing network interfaces: %v", err))
	}
	nics := make([]NIC, 0, len(links))
	for _, l := range links {
		n := NIC{
			Name:       l.Name,
			MAC:        l.MAC,
			MTU:        l.MTU,
			OperState:  l.OperState,
			SpeedMbps:  readSpeed(root, l.Name),
			Addresses:  append([]string{}, l.Addresses...),
			IsLoopback: l.Loopback,
			IsVirtual:  !hasDevice(root, l.Name),
			RDMA:       []RDMADevice{},
		}
		for _, d := range rdma {
			if slices.Contains(d.NetDevs, l.Name) {
				n.RDMA = append(n.RDMA, d)
			}
		}
		nics = append(nics, n)
	}
	slices.SortFunc(nics, func(a, b NIC) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return nics, rdma, warns
}
