package discover

import "fmt"

// nvlinkBytesPerLink is the one-direction bandwidth of one NVLink link by
// generation, in bytes/s (P100: 4x20 GB/s; V100, A100, H100: 25 GB/s; B200: 50 GB/s).
var nvlinkBytesPerLink = map[int]float64{1: 20e9, 2: 25e9, 3: 25e9, 4: 25e9, 5: 50e9}

// pcieBytesPerLane is the one-direction bandwidth of one PCIe lane by
// generation after line coding, in bytes/s.
var pcieBytesPerLane = map[int]float64{1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.877e9}

// LinkBandwidth returns the one-direction link bandwidth in bytes/s between
// ranks on one node (NVLink when every GPU has an NVLink peer, else PCIe) and
// between nodes (the fastest active RDMA port, else the fastest up physical
// NIC). 0 means unknown.
func (r *Report) LinkBandwidth() (intra, inter float64) {
	d := r.bandwidthDefaults()
	return d.IntraNodeBandwidth, d.InterNodeBandwidth
}

func (r *Report) bandwidthDefaults() Defaults {
	d := Defaults{}
	d.IntraNodeBandwidth, d.IntraNodeSource = r.intraBandwidth()
	d.InterNodeBandwidth, d.InterNodeSource = r.interBandwidth()
	return d
}

func (r *Report) intraBandwidth() (float64, string) {
	if len(r.GPUs) == 0 {
		return 0, "unknown: no GPU found"
	}
	if len(r.GPUs) > 1 {
		bw, src := r.nvlinkBandwidth()
		if bw > 0 {
			return bw, src
		}
	}
	best, at := 0.0, ""
	for _, g := range r.GPUs {
		lane, ok := pcieBytesPerLane[g.PCIeGeneration]
		if !ok || g.PCIeWidth <= 0 {
			return 0, fmt.Sprintf("unknown: PCIe link of GPU %d not reported", g.Index)
		}
		bw := lane * float64(g.PCIeWidth)
		if at == "" || bw < best {
			best, at = bw, fmt.Sprintf("PCIe gen%d x%d (slowest GPU %d)", g.PCIeGeneration, g.PCIeWidth, g.Index)
		}
	}
	return best, at
}

// nvlinkBandwidth is the slowest GPU's total NVLink bandwidth, or 0 when some
// GPU has no NVLink peer.
func (r *Report) nvlinkBandwidth() (float64, string) {
	best, at := 0.0, ""
	for _, g := range r.GPUs {
		per, ok := nvlinkBytesPerLink[g.NVLinkVersion]
		if !ok || len(g.NVLinkPeers) == 0 || g.NVLinkLinks <= 0 {
			return 0, ""
		}
		bw := per * float64(g.NVLinkLinks)
		if at == "" || bw < best {
			best, at = bw, fmt.Sprintf("NVLink%d x%d links (slowest GPU %d)", g.NVLinkVersion, g.NVLinkLinks, g.Index)
		}
	}
	return best, at
}

func (r *Report) interBandwidth() (float64, string) {
	best, at := 0.0, ""
	for _, d := range r.RDMADevices {
		for _, p := range d.Ports {
			if p.State == "ACTIVE" && p.RateGbps*1e9/8 > best {
				best, at = p.RateGbps*1e9/8, fmt.Sprintf("RDMA %s port %d at %g Gb/s", d.Name, p.Port, p.RateGbps)
			}
		}
	}
	if best > 0 {
		return best, at
	}
	for _, n := range r.NICs {
		if n.IsLoopback || n.IsVirtual || n.OperState != "up" || n.SpeedMbps <= 0 {
			continue
		}
		if bw := float64(n.SpeedMbps) * 1e6 / 8; bw > best {
			best, at = bw, fmt.Sprintf("NIC %s at %d Mb/s", n.Name, n.SpeedMbps)
		}
	}
	if best > 0 {
		return best, at
	}
	return 0, "unknown: no active RDMA port and no up physical NIC reports its speed"
}
