package discover

// Report is what Discover finds. It marshals to the JSON that
// `swiftmoe-sidecar discover --json` prints.
type Report struct {
	Hostname string `json:"hostname"`
	// GPUCount is len(GPUs).
	GPUCount int        `json:"gpu_count"`
	GPUs     []GPU      `json:"gpus"`
	NVML     NVMLStatus `json:"nvml"`
	NICs     []NIC      `json:"nics"`
	// RDMADevices lists every RDMA device under sysfs class/infiniband,
	// including those bound to no network interface.
	RDMADevices []RDMADevice `json:"rdma_devices"`
	// Defaults are derived from the hardware above.
	Defaults Defaults `json:"defaults"`
	// Warnings lists what could not be read; discovery goes on without it.
	Warnings []string `json:"warnings"`
}

// NVMLStatus says whether NVIDIA's management library could be used.
type NVMLStatus struct {
	Available bool `json:"available"`
	// Reason is why NVML is unavailable (empty when available).
	Reason        string `json:"reason,omitempty"`
	DriverVersion string `json:"driver_version,omitempty"`
}

// GPU is one NVIDIA GPU as NVML reports it.
type GPU struct {
	Index            int    `json:"index"`
	Name             string `json:"name"`
	UUID             string `json:"uuid"`
	PCIBusID         string `json:"pci_bus_id"`
	MemoryTotalBytes uint64 `json:"memory_total_bytes"`
	MemoryFreeBytes  uint64 `json:"memory_free_bytes"`
	// NVLinkLinks is the number of active NVLink links.
	NVLinkLinks int `json:"nvlink_links"`
	// NVLinkVersion is the NVLink generation of the active links (0 when none).
	NVLinkVersion int `json:"nvlink_version"`
	// NVLinkPeers are the indices of GPUs reachable over NVLink, directly or
	// through an NVSwitch.
	NVLinkPeers []int `json:"nvlink_peers"`
	// PCIeGeneration and PCIeWidth are the maximum link generation and lane
	// count (0 when unknown).
	PCIeGeneration int `json:"pcie_generation"`
	PCIeWidth      int `json:"pcie_width"`
}

// NIC is one network interface.
type NIC struct {
	Name      string `json:"name"`
	MAC       string `json:"mac"`
	MTU       int    `json:"mtu"`
	OperState string `json:"oper_state"`
	// SpeedMbps comes from sysfs class/net/NAME/speed; -1 when unknown.
	SpeedMbps  int      `json:"speed_mbps"`
	Addresses  []string `json:"addresses"`
	IsLoopback bool     `json:"is_loopback"`
	// IsVirtual is true for interfaces without a backing device in sysfs
	// (bridges, veths, tunnels); they are not used for bandwidth defaults.
	IsVirtual bool `json:"is_virtual"`
	// RDMA lists the RDMA devices bound to this interface.
	RDMA []RDMADevice `json:"rdma"`
}

// RDMADevice is one device under sysfs class/infiniband.
type RDMADevice struct {
	Name string `json:"name"`
	// NetDevs are the network interfaces the device is bound to.
	NetDevs []string   `json:"netdevs"`
	Ports   []RDMAPort `json:"ports"`
}

// RDMAPort is one port of an RDMA device.
type RDMAPort struct {
	Port int `json:"port"`
	// State is the port state word ("ACTIVE", "DOWN", ...).
	State string `json:"state"`
	// RateGbps is parsed from ports/N/rate ("100 Gb/sec (4X EDR)"); 0 when unknown.
	RateGbps  float64 `json:"rate_gbps"`
	LinkLayer string  `json:"link_layer"`
}

// Defaults are derived settings with the reason for each.
type Defaults struct {
	// IntraNodeBandwidth and InterNodeBandwidth are link bandwidths in bytes
	// per second, 0 when unknown.
	IntraNodeBandwidth float64 `json:"intra_node_bandwidth"`
	InterNodeBandwidth float64 `json:"inter_node_bandwidth"`
	IntraNodeSource    string  `json:"intra_node_source"`
	InterNodeSource    string  `json:"inter_node_source"`
}
