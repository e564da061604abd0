package host

import (
	"os/exec"
	"syscall"
)

// bindToParent makes the kernel kill the plugin when the sidecar dies, even
// by SIGKILL, so a plugin never outlives its host.
func bindToParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
