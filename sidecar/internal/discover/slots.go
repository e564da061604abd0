package discover

import "fmt"

// DefaultSlotsWithoutGPU is the slots per rank suggested when no GPU is
// found (the paper's setting: 4 slots per GPU).
const DefaultSlotsWithoutGPU = 4

// SuggestSlots returns the expert slots per rank per MoE layer that fit in
// memFraction of the smallest free GPU memory, with the reason.
//
// expertBytes is the GPU memory one slot of one layer costs (the expert's
// weights plus their gradient buffer); layers is the number of MoE layers.
// The result is capped at numExperts (a rank never needs more slots than
// there are experts). Without GPUs it is min(DefaultSlotsWithoutGPU,
// numExperts). It is at least 1 when the inputs are valid; 0 means an input
// is invalid and the reason names it. The caller still has to make sure that
// slots*world_size >= numExperts.
func SuggestSlots(r *Report, expertBytes uint64, numExperts, layers int, memFraction float64) (int, string) {
	switch {
	case r == nil:
		return 0, "no discovery report: run discovery first"
	case expertBytes == 0:
		return 0, "expertBytes is 0: pass the bytes one expert slot costs (weights plus gradients)"
	case numExperts < 1:
		return 0, fmt.Sprintf("numExperts is %d: pass the experts per MoE layer (>= 1)", numExperts)
	case layers < 1:
		return 0, fmt.Sprintf("layers is %d: pass the number of MoE layers (>= 1)", layers)
	case !(memFraction > 0 && memFraction <= 1):
		return 0, fmt.Sprintf("memFraction is %g: pass a fraction of free GPU memory in (0, 1], e.g. 0.3", memFraction)
	}
	if len(r.GPUs) == 0 {
		s := min(DefaultSlotsWithoutGPU, numExperts)
		return s, fmt.Sprintf("no GPU found: default of %d slots per rank", s)
	}
	free, at := r.GPUs[0].MemoryFreeBytes, r.GPUs[0].Index
	for _, g := range r.GPUs[1:] {
		if g.MemoryFreeBytes < free {
			free, at = g.MemoryFreeBytes, g.Index
		}
	}
	budget := float64(free) * memFraction
	perSlot := float64(expertBytes) * float64(layers)
	fit := int(budget / perSlot)
	switch {
	case fit < 1:
		return 1, fmt.Sprintf("one slot per layer needs %s but %.0f%% of GPU %d's free %s is %s: using 1 slot; free memory or lower the expert size",
			fmtBytes(perSlot), memFraction*100, at, fmtBytes(float64(free)), fmtBytes(budget))
	case fit >= numExperts:
		return numExperts, fmt.Sprintf("%.0f%% of GPU %d's free %s fits %d slots of %s; capped at the %d experts",
			memFraction*100, at, fmtBytes(float64(free)), fit, fmtBytes(perSlot), numExperts)
	}
	return fit, fmt.Sprintf("%.0f%% of GPU %d's free %s fits %d slots of %s (%d layers x %s)",
		memFraction*100, at, fmtBytes(float64(free)), fit, fmtBytes(perSlot), layers, fmtBytes(float64(expertBytes)))
}

// fmtBytes writes a byte count with a binary unit.
func fmtBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", b)
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
