//go:build !linux || !cgo

package discover

import "fmt"

// NewNVMLSource returns a GPUSource that reports NVML unavailable: NVML is
// used only on Linux builds with cgo.
func NewNVMLSource() GPUSource { return nullGPUSource{} }

type nullGPUSource struct{}

func (nullGPUSource) Init() error {
	return fmt.Errorf("%w: this build has no NVML support (it needs Linux and cgo)", ErrNVMLUnavailable)
}
func (nullGPUSource) Shutdown() error                { return nil }
func (nullGPUSource) DriverVersion() (string, error) { return "", nil }
func (nullGPUSource) Count() (int, error)            { return 0, nil }
func (nullGPUSource) Device(int) (GPUDevice, error) {
	return nil, fmt.Errorf("%w: no devices", ErrNVMLUnavailable)
}
