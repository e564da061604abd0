package discover

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrNVMLUnavailable is wrapped by GPUSource.Init when NVIDIA's management
// library cannot be loaded or initialised (no driver, no GPU, no permission).
var ErrNVMLUnavailable = errors.New("NVML unavailable")

// GPUSource is the part of NVML that discovery needs. The real one is
// nvmlSource (Linux with cgo); tests use fakes.
type GPUSource interface {
	// Init loads and initialises the library. An error (wrapping
	// ErrNVMLUnavailable) means no GPU can be reported; the message says why.
	Init() error
	// Shutdown releases the library; called once after a successful Init.
	Shutdown() error
	DriverVersion() (string, error)
	Count() (int, error)
	Device(index int) (GPUDevice, error)
}

// GPUDevice is one GPU of a GPUSource.
type GPUDevice interface {
	Name() (string, error)
	UUID() (string, error)
	// PCIBusID is "dddddddd:bb:dd" in lower-case hex; NVLink remotes use
	// the same form.
	PCIBusID() (string, error)
	Memory() (total, free uint64, err error)
	// NVLinks returns the active NVLink links (none on GPUs without NVLink).
	NVLinks() ([]NVLink, error)
	// PCIe returns the maximum PCIe generation and width (0, 0 when unknown).
	PCIe() (gen, width int, err error)
}

// NVLink is one active NVLink link of a GPU.
type NVLink struct {
	Link    int
	Version int
	// RemoteBusID is the PCI bus id of the device at the far end: another
	// GPU, or an NVSwitch.
	RemoteBusID string
}

// collectGPUs reads every GPU of src. A failing Init yields no GPUs and an
// unavailable status; a failing per-device query yields a warning and the
// field's zero value.
func collectGPUs(src GPUSource) ([]GPU, NVMLStatus, []string) {
	if src == nil {
		return nil, NVMLStatus{Reason: "no GPU source configured"}, nil
	}
	if err := src.Init(); err != nil {
		return nil, NVMLStatus{Reason: strings.TrimPrefix(err.Error(), ErrNVMLUnavailable.Error()+": ")}, nil
	}
	var warns []string
	warn := func(format string, args ...any) { warns = append(warns, fmt.Sprintf(format, args...)) }
	defer func() {
		if err := src.Shutdown(); err != nil {
			warn("nvml shutdown: %v", err)
		}
	}()
	status := NVMLStatus{Available: true}
	if v, err := src.DriverVersion(); err != nil {
		warn("nvml driver version: %v", err)
	} else {
		status.DriverVersion = v
	}
	n, err := src.Count()
	if err != nil {
		warn("nvml device count: %v", err)
		return nil, status, warns
	}
	gpus := make([]GPU, 0, n)
	links := make([][]NVLink, 0, n)
	for i := 0; i < n; i++ {
		dev, err := src.Device(i)
		if err != nil {
			warn("gpu %d: %v", i, err)
			continue
		}
		g := GPU{Index: i, NVLinkPeers: []int{}}
		if g.Name, err = dev.Name(); err != nil {
			warn("gpu %d name: %v", i, err)
		}
		if g.UUID, err = dev.UUID(); err != nil {
			warn("gpu %d uuid: %v", i, err)
		}
		if g.PCIBusID, err = dev.PCIBusID(); err != nil {
			warn("gpu %d pci bus id: %v", i, err)
		}
		g.PCIBusID = normBusID(g.PCIBusID)
		if g.MemoryTotalBytes, g.MemoryFreeBytes, err = dev.Memory(); err != nil {
			warn("gpu %d memory: %v", i, err)
		}
		if g.PCIeGeneration, g.PCIeWidth, err = dev.PCIe(); err != nil {
			warn("gpu %d pcie: %v", i, err)
		}
		nv, err := dev.NVLinks()
		if err != nil {
			warn("gpu %d nvlink: %v", i, err)
		}
		g.NVLinkLinks = len(nv)
		for _, l := range nv {
			g.NVLinkVersion = max(g.NVLinkVersion, l.Version)
		}
		gpus = append(gpus, g)
		links = append(links, nv)
	}
	setNVLinkPeers(gpus, links)
	return gpus, status, warns
}

// setNVLinkPeers fills NVLinkPeers: GPUs a and b are peers when a link of one
// ends at the other, or when both have a link to the same non-GPU device
// (an NVSwitch). links[i] belongs to gpus[i].
func setNVLinkPeers(gpus []GPU, links [][]NVLink) {
	byBus := map[string]int{}
	for i, g := range gpus {
		if g.PCIBusID != "" {
			byBus[g.PCIBusID] = i
		}
	}
	peer := make([]map[int]bool, len(gpus))
	for i := range peer {
		peer[i] = map[int]bool{}
	}
	switches := map[string][]int{} // remote non-GPU bus id -> GPUs linked to it
	for i, ls := range links {
		for _, l := range ls {
			remote := normBusID(l.RemoteBusID)
			if remote == "" {
				continue
			}
			if j, ok := byBus[remote]; ok {
				if j != i {
					peer[i][j], peer[j][i] = true, true
				}
				continue
			}
			if !slices.Contains(switches[remote], i) {
				switches[remote] = append(switches[remote], i)
			}
		}
	}
	for _, members := range switches {
		for _, a := range members {
			for _, b := range members {
				if a != b {
					peer[a][b] = true
				}
			}
		}
	}
	for i := range gpus {
		ps := []int{}
		for j := range peer[i] {
			ps = append(ps, gpus[j].Index)
		}
		slices.Sort(ps)
		gpus[i].NVLinkPeers = ps
	}
}

// normBusID lower-cases a PCI bus id and drops a trailing function number so
// that "00000000:3B:00.0" and "00000000:3b:00" compare equal.
func normBusID(id string) string {
	id = strings.ToLower(strings.TrimSpace(strings.TrimRight(id, "\x00")))
	if i := strings.LastIndexByte(id, '.'); i > 0 {
		id = id[:i]
	}
	return id
}
