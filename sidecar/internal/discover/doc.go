// Package discover inspects the machine the sidecar runs on: GPUs through
// NVML (github.com/NVIDIA/go-nvml) and network interfaces through netlink
// plus sysfs (link speed, RDMA devices and their port rates).
//
// Hardware sits behind two small interfaces, GPUSource and LinkSource, so
// tests use fakes and a machine without NVIDIA's library reports zero GPUs
// with the reason instead of failing. Nothing here shells out.
//
// The Report feeds the sidecar's defaults: SuggestSlots picks expert slots
// per rank from free GPU memory, and LinkBandwidth gives the intra- and
// inter-node link bandwidths that strategies weighing transfers use.
package discover
