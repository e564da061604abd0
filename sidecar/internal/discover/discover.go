package discover

import (
	"context"
	"fmt"
	"os"
)

// DefaultSysfsRoot is where the kernel mounts sysfs.
const DefaultSysfsRoot = "/sys"

// Discoverer collects a Report from its hardware sources. The zero value
// finds nothing; NewDiscoverer wires the real sources.
type Discoverer struct {
	// GPUs is the GPU source; nil reports no GPUs.
	GPUs GPUSource
	// Links lists network interfaces; nil reports none.
	Links LinkSource
	// SysfsRoot is where sysfs is read (link speed, RDMA devices).
	SysfsRoot string
	// Hostname names the machine; nil uses os.Hostname.
	Hostname func() (string, error)
}

// NewDiscoverer returns a Discoverer over NVML, netlink and /sys.
func NewDiscoverer() *Discoverer {
	return &Discoverer{GPUs: NewNVMLSource(), Links: NewNetlinkSource(), SysfsRoot: DefaultSysfsRoot}
}

// Discover inspects this machine's GPUs and NICs. A machine without NVIDIA's
// library reports zero GPUs with the reason; it is an error only when ctx
// ends first.
func Discover(ctx context.Context) (*Report, error) {
	return NewDiscoverer().Discover(ctx)
}

// Discover collects the report. Sources that fail add warnings; the only
// error is ctx ending before collection finishes.
func (d *Discoverer) Discover(ctx context.Context) (*Report, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("discovering hardware: %w", err)
	}
	done := make(chan *Report, 1)
	go func() { done <- d.collect() }()
	select {
	case r := <-done:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("discovering hardware: %w", ctx.Err())
	}
}

func (d *Discoverer) collect() *Report {
	r := &Report{GPUs: []GPU{}, NICs: []NIC{}, RDMADevices: []RDMADevice{}, Warnings: []string{}}
	hostname := d.Hostname
	if hostname == nil {
		hostname = os.Hostname
	}
	if h, err := hostname(); err != nil {
		r.Warnings = append(r.Warnings, fmt.Sprintf("hostname: %v", err))
	} else {
		r.Hostname = h
	}
	gpus, status, warns := collectGPUs(d.GPUs)
	if gpus != nil {
		r.GPUs = gpus
	}
	r.GPUCount, r.NVML = len(r.GPUs), status
	r.Warnings = append(r.Warnings, warns...)

	root := d.SysfsRoot
	if root == "" {
		root = DefaultSysfsRoot
	}
	nics, rdma, warns := collectNICs(d.Links, root)
	r.NICs, r.RDMADevices = nics, rdma
	r.Warnings = append(r.Warnings, warns...)
	r.Defaults = r.bandwidthDefaults()
	return r
}
