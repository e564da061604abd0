package discover

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes a readable summary of the report.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "host %s\n", r.Hostname)
	if r.NVML.Available {
		fmt.Fprintf(&b, "NVML: available, driver %s\n", orDash(r.NVML.DriverVersion))
	} else {
		fmt.Fprintf(&b, "NVML: unavailable (%s)\n", r.NVML.Reason)
	}
	fmt.Fprintf(&b, "GPUs: %d\n", r.GPUCount)
	for _, g := range r.GPUs {
		fmt.Fprintf(&b, "  gpu %d  %s  %s  memory %s free of %s  pci %s\n", g.Index, g.Name, g.UUID,
			fmtBytes(float64(g.MemoryFreeBytes)), fmtBytes(float64(g.MemoryTotalBytes)), orDash(g.PCIBusID))
		link := "no NVLink"
		if g.NVLinkLinks > 0 {
			link = fmt.Sprintf("NVLink%d x%d, peers %v", g.NVLinkVersion, g.NVLinkLinks, g.NVLinkPeers)
		}
		fmt.Fprintf(&b, "         %s; PCIe gen%d x%d\n", link, g.PCIeGeneration, g.PCIeWidth)
	}
	fmt.Fprintf(&b, "NICs: %d\n", len(r.NICs))
	for _, n := range r.NICs {
		speed := "speed unknown"
		if n.SpeedMbps > 0 {
			speed = fmt.Sprintf("%d Mb/s", n.SpeedMbps)
		}
		var tags []string
		if n.IsLoopback {
			tags = append(tags, "loopback")
		}
		if n.IsVirtual {
			tags = append(tags, "virtual")
		}
		for _, d := range n.RDMA {
			tags = append(tags, "rdma "+d.Name)
		}
		fmt.Fprintf(&b, "  %-10s %-6s mtu %-5d %-13s mac %s  %s", n.Name, n.OperState, n.MTU, speed, orDash(n.MAC), strings.Join(n.Addresses, " "))
		if len(tags) > 0 {
			fmt.Fprintf(&b, "  [%s]", strings.Join(tags, ", "))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "RDMA devices: %d\n", len(r.RDMADevices))
	for _, d := range r.RDMADevices {
		fmt.Fprintf(&b, "  %s  netdevs %s\n", d.Name, orDash(strings.Join(d.NetDevs, ",")))
		for _, p := range d.Ports {
			fmt.Fprintf(&b, "    port %d  %s  %g Gb/s  %s\n", p.Port, orDash(p.State), p.RateGbps, orDash(p.LinkLayer))
		}
	}
	fmt.Fprintf(&b, "link bandwidth: intra-node %s (%s); inter-node %s (%s)\n",
		FormatRate(r.Defaults.IntraNodeBandwidth), r.Defaults.IntraNodeSource,
		FormatRate(r.Defaults.InterNodeBandwidth), r.Defaults.InterNodeSource)
	for _, w := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing discovery summary: %w", err)
	}
	return nil
}

// FormatRate writes a bandwidth in bytes/s as GB/s, or "unknown" for 0.
func FormatRate(bytesPerS float64) string {
	if bytesPerS <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GB/s", bytesPerS/1e9)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
