//go:build linux && cgo

package discover

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NewNVMLSource returns the GPUSource backed by NVIDIA's libnvidia-ml.so.1,
// loaded at Init; a machine without it reports zero GPUs.
func NewNVMLSource() GPUSource { return &nvmlSource{lib: nvml.New()} }

type nvmlSource struct{ lib nvml.Interface }

func (s *nvmlSource) Init() error {
	if ret := s.lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return fmt.Errorf("%w: libnvidia-ml.so.1 not found (no NVIDIA driver installed)", ErrNVMLUnavailable)
		}
		return fmt.Errorf("%w: nvmlInit: %s", ErrNVMLUnavailable, nvmlErr(ret))
	}
	return nil
}

func (s *nvmlSource) Shutdown() error { return retErr("nvmlShutdown", s.lib.Shutdown()) }

func (s *nvmlSource) DriverVersion() (string, error) {
	v, ret := s.lib.SystemGetDriverVersion()
	return v, retErr("nvmlSystemGetDriverVersion", ret)
}

func (s *nvmlSource) Count() (int, error) {
	n, ret := s.lib.DeviceGetCount()
	return n, retErr("nvmlDeviceGetCount", ret)
}

func (s *nvmlSource) Device(index int) (GPUDevice, error) {
	d, ret := s.lib.DeviceGetHandleByIndex(index)
	if err := retErr("nvmlDeviceGetHandleByIndex", ret); err != nil {
		return nil, err
	}
	return nvmlDevice{d}, nil
}

type nvmlDevice struct{ d nvml.Device }

func (d nvmlDevice) Name() (string, error) {
	v, ret := d.d.GetName()
	return v, retErr("nvmlDeviceGetName", ret)
}

func (d nvmlDevice) UUID() (string, error) {
	v, ret := d.d.GetUUID()
	return v, retErr("nvmlDeviceGetUUID", ret)
}

func (d nvmlDevice) PCIBusID() (string, error) {
	p, ret := d.d.GetPciInfo()
	if err := retErr("nvmlDeviceGetPciInfo", ret); err != nil {
		return "", err
	}
	return busID(p), nil
}

func (d nvmlDevice) Memory() (uint64, uint64, error) {
	m, ret := d.d.GetMemoryInfo()
	return m.Total, m.Free, retErr("nvmlDeviceGetMemoryInfo", ret)
}

func (d nvmlDevice) PCIe() (int, int, error) {
	gen, ret := d.d.GetMaxPcieLinkGeneration()
	if err := retErr("nvmlDeviceGetMaxPcieLinkGeneration", ret); err != nil {
		return 0, 0, err
	}
	width, ret := d.d.GetMaxPcieLinkWidth()
	if err := retErr("nvmlDeviceGetMaxPcieLinkWidth", ret); err != nil {
		return gen, 0, err
	}
	return gen, width, nil
}

// NVLinks walks every possible link; a GPU without NVLink answers
// NOT_SUPPORTED (or INVALID_ARGUMENT past its last link), which is no link.
func (d nvmlDevice) NVLinks() ([]NVLink, error) {
	var out []NVLink
	for link := 0; link < nvml.NVLINK_MAX_LINKS; link++ {
		state, ret := d.d.GetNvLinkState(link)
		if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if err := retErr(fmt.Sprintf("nvmlDeviceGetNvLinkState(link %d)", link), ret); err != nil {
			return out, err
		}
		if state != nvml.FEATURE_ENABLED {
			continue
		}
		l := NVLink{Link: link}
		if v, ret := d.d.GetNvLinkVersion(link); ret == nvml.SUCCESS {
			l.Version = int(v)
		}
		if p, ret := d.d.GetNvLinkRemotePciInfo(link); ret == nvml.SUCCESS {
			l.RemoteBusID = busID(p)
		}
		out = append(out, l)
	}
	return out, nil
}

func busID(p nvml.PciInfo) string {
	return fmt.Sprintf("%08x:%02x:%02x", p.Domain, p.Bus, p.Device)
}

func retErr(call string, ret nvml.Return) error {
	if ret == nvml.SUCCESS {
		return nil
	}
	return fmt.Errorf("%s: %w", call, errors.New(nvmlErr(ret)))
}

// nvmlErr names a return code without calling into a library that may be
// unloaded.
func nvmlErr(ret nvml.Return) string {
	return fmt.Sprintf("%s (code %d)", ret.Error(), int32(ret))
}
