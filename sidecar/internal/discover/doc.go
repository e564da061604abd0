// Package discover inspects the machine the sidecar runs on: GPUs through
// NVML (github.com/NVIDIA/go-nvml) and network interfaces through netlink
// plus sysfs (link speed, RDMA devices and their port rates).
//
// Hardware sits behind two small interfaces, GPUSource and LinkSource, so
// tests use fakes and a machine without NVIDIA's library reports zero GPUs
// with the reason instead of failing. Nothing here shells out.
//
// The Report carries derived defaults (Defaults: intra- and inter-node link
// bandwidths, with their sources), which `swiftmoe-sidecar discover` prints,
// and SuggestSlots picks expert slots per rank from free GPU memory. The
// sidecar's `serve` keeps a Cache of reports, and a job that registers with
// slots_per_rank or a bandwidth of 0 gets them from it (planner.SetHardware).
package discover
