// Package host runs strategy plugins (hashicorp/go-plugin over gRPC) for the
// sidecar: it finds swiftmoe-strategy-NAME binaries in one plugins directory,
// verifies their SHA-256 (against SHA256SUMS, or the digest pinned at first
// load or by a job, see Trust), calls them under a deadline, validates every
// plan they return, and kills and restarts a plugin that crashes, hangs or
// returns an invalid plan. A plugin that answers with an error keeps serving:
// one job's bad request must not cost the other jobs on that plugin their
// plans. It is safe for concurrent use.
package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
)

// Defaults of Options.
const (
	DefaultCallTimeout  = 200 * time.Millisecond
	DefaultStartTimeout = 10 * time.Second
)

// Options configure a Host.
type Options struct {
	// Dir is the plugins directory; it must be absolute.
	Dir string
	// CallTimeout is the deadline of one Plan call (DefaultCallTimeout if 0).
	CallTimeout time.Duration
	// StartTimeout bounds starting a plugin process (DefaultStartTimeout if 0).
	StartTimeout time.Duration
	// Logger receives the host's and the plugins' log lines (hclog.NewNullLogger if nil).
	Logger hclog.Logger
	// Metrics records restarts and rejected plans; nil records nothing.
	Metrics *metrics.Metrics
	// SocketDir is where plugins create their unix sockets (made 0700 if
	// missing, removed on Close); empty means a fresh private directory under
	// $TMPDIR.
	SocketDir string
}

// Host owns the plugin processes of one sidecar.
type Host struct {
	dir          string
	timeout      time.Duration
	startTimeout time.Duration
	log          hclog.Logger
	metrics      *metrics.Metrics
	sums         *checksums
	sockDir      string         // private directory of the plugins' unix sockets
	wg           sync.WaitGroup // background starts and kills

	mu          sync.Mutex
	supervisors map[string]*supervisor // by strategy name
	closed      bool
}

// Info describes a strategy plugin.
type Info struct {
	sdk.Info
	// Path is the plugin binary; SHA256 its verified hash, in hex.
	Path   string
	SHA256 string
}

// New checks the plugins directory and reads its SHA256SUMS file, if any.
// No plugin starts until it is first used.
func New(o Options) (*Host, error) {
	if !filepath.IsAbs(o.Dir) {
		return nil, fmt.Errorf("plugins directory %q must be an absolute path", o.Dir)
	}
	if _, err := listNames(o.Dir); err != nil {
		return nil, err
	}
	sums, err := loadChecksums(o.Dir)
	if err != nil {
		return nil, err
	}
	// Plugins listen on unix sockets in a private directory, removed on
	// Close, so a killed plugin leaves no socket file behind in $TMPDIR.
	sockDir := o.SocketDir
	if sockDir == "" {
		if sockDir, err = os.MkdirTemp("", "swiftmoe-plugin-sockets-"); err != nil {
			return nil, fmt.Errorf("creating the plugins' socket directory: %w", err)
		}
	} else if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the plugins' socket directory: %w", err)
	}
	h := &Host{
		dir: o.Dir, timeout: o.CallTimeout, startTimeout: o.StartTimeout,
		log: o.Logger, metrics: o.Metrics, sums: sums, sockDir: sockDir, supervisors: map[string]*supervisor{},
	}
	if h.timeout <= 0 {
		h.timeout = DefaultCallTimeout
	}
	if h.startTimeout <= 0 {
		h.startTimeout = DefaultStartTimeout
	}
	if h.log == nil {
		h.log = hclog.NewNullLogger()
	}
	return h, nil
}

// Names lists the strategies whose binaries are in the plugins directory.
func (h *Host) Names() ([]string, error) { return listNames(h.dir) }

// Has reports whether strategy name has a usable binary, and why not.
func (h *Host) Has(name string) error {
	_, err := binaryPath(h.dir, name)
	return err
}

// supervisor returns the supervisor of strategy name's plugin process,
// creating it (without starting a process) on first use.
func (h *Host) supervisor(name string) (*supervisor, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if sv, ok := h.supervisors[name]; ok {
		return sv, nil
	}
	path, err := binaryPath(h.dir, name)
	if err != nil {
		return nil, err
	}
	sv := &supervisor{h: h, name: name, path: path}
	h.supervisors[name] = sv
	return sv, nil
}

// Info starts the plugin if needed and returns its description.
func (h *Host) Info(ctx context.Context, name string) (Info, error) {
	sv, err := h.supervisor(name)
	if err != nil {
		return Info{}, err
	}
	in, err := sv.acquire(ctx)
	if err != nil {
		return Info{Path: sv.path}, err
	}
	info := in.info
	if info.Name != name {
		h.log.Warn("plugin describes itself under another name; using its binary name", "strategy", name, "described", info.Name)
		info.Name = name
	}
	return Info{Info: info, Path: sv.path, SHA256: in.sha256}, nil
}

// List describes every strategy in the plugins directory, starting the
// plugins not yet running in parallel. A plugin that cannot start is listed
// with the error as its description.
func (h *Host) List(ctx context.Context) ([]Info, error) {
	names, err := h.Names()
	if err != nil {
		return nil, err
	}
	out := make([]Info, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			info, err := h.Info(ctx, name)
			if err != nil {
				info.Name = name
				info.Description = "unavailable: " + err.Error()
			}
			out[i] = info
		}()
	}
	wg.Wait()
	return out, nil
}

// Plan calls strategy name with the call deadline and validates the answer.
// Every failure is a *Failure. A crash, a missed deadline or an invalid plan
// kills the plugin process and starts a fresh one; an error answer, a
// refused binary (ReasonRefused), a plugin that cannot start and a caller
// that gave up do not.
func (h *Host) Plan(ctx context.Context, name string, req *sdk.Request) (*sdk.Response, error) {
	sv, in, f := h.running(ctx, name)
	if f != nil {
		return nil, f
	}
	cctx, cancel := context.WithTimeout(ctx, h.timeout)
	resp, err := in.strategy.Plan(cctx, req)
	cancel()
	if err != nil {
		return nil, h.callFailed(sv, in, ctx, cctx, err)
	}
	if reason, err := validateResponse(req, resp); err != nil {
		h.metrics.InvalidPlanRejected(name, string(reason))
		sv.discard(in, reason, err)
		return nil, &Failure{Strategy: name, Reason: reason, Err: err}
	}
	return resp, nil
}

// running returns strategy name's supervisor and running process, starting
// it if needed, or the *Failure that says why there is none.
func (h *Host) running(ctx context.Context, name string) (*supervisor, *instance, *Failure) {
	sv, err := h.supervisor(name)
	if err != nil {
		return nil, nil, &Failure{Strategy: name, Reason: ReasonUnavailable, Err: err}
	}
	in, err := sv.acquire(ctx)
	var refusal *Refusal
	switch {
	case err == nil:
		return sv, in, nil
	case ctx.Err() != nil:
		return nil, nil, &Failure{Strategy: name, Reason: ReasonCanceled, Err: err}
	case errors.As(err, &refusal):
		return nil, nil, &Failure{Strategy: name, Reason: ReasonRefused, Err: err}
	default:
		return nil, nil, &Failure{Strategy: name, Reason: ReasonUnavailable, Err: err}
	}
}

// callFailed classifies the error of a call to in, restarts the process when
// the process is at fault (a crash or a missed deadline), and returns the
// *Failure.
func (h *Host) callFailed(sv *supervisor, in *instance, parent, call context.Context, err error) *Failure {
	reason := classify(parent, call, in, err)
	if reason == ReasonTimeout {
		err = fmt.Errorf("no answer within the plugin timeout of %v: %w", h.timeout, err)
	}
	if reason == ReasonCrash || reason == ReasonTimeout {
		sv.discard(in, reason, err)
	}
	return &Failure{Strategy: sv.name, Reason: reason, Err: err}
}

// ValidateOptions asks strategy name to check a job's options (see
// sdk.OptionValidator), under the call deadline. It returns an
// *sdk.OptionsError when the strategy refuses them; nil when it accepts them
// or was built before the check existed; and a *Failure when it could not be
// asked (a crash or a missed deadline restarts the plugin, as in Plan).
func (h *Host) ValidateOptions(ctx context.Context, name string, opts map[string]string) error {
	sv, in, f := h.running(ctx, name)
	if f != nil {
		return f
	}
	cctx, cancel := context.WithTimeout(ctx, h.timeout)
	err := in.strategy.ValidateOptions(cctx, opts)
	cancel()
	var oe *sdk.OptionsError
	if err == nil || errors.As(err, &oe) {
		return err
	}
	return h.callFailed(sv, in, ctx, cctx, err)
}

// Trust decides the SHA-256 (hex) strategy name's binary must have for a job
// that first saw the digest want (hex; "" for a job that has seen none), and
// checks the binary on disk against it now. With a SHA256SUMS file, the file
// decides and a different want is only logged. Without one, the digest this
// host pinned decides (a want that differs from it is refused); with none
// pinned yet, want is pinned (or, when empty, the binary's own digest), so a
// job's first digest outlives the sidecar that saw it. A refusal is a
// *Refusal, logged at error level and counted in
// swiftmoe_plugin_refused_total; the digest decided is returned with it when
// there is one.
func (h *Host) Trust(name, want string) (string, error) {
	path, err := binaryPath(h.dir, name)
	if err != nil {
		return "", err
	}
	var wantSum []byte
	if want != "" {
		if wantSum, err = hex.DecodeString(want); err != nil || len(wantSum) != sha256.Size {
			return "", fmt.Errorf("strategy_sha256 %q is not a SHA-256 digest; send the 64 hex digits of RegisterJobResponse.strategy.sha256, or nothing", want)
		}
	}
	sum, err := h.sums.decide(name, path, wantSum)
	if err == nil {
		var onDisk []byte
		if onDisk, err = fileSHA256(path); err == nil && !bytes.Equal(onDisk, sum) {
			err = &Refusal{Strategy: name, Reason: RefusedChecksum,
				Msg: fmt.Sprintf("%s has the SHA-256 %s, not the %s trusted (%s); put back the plugin the job started with, or start the job afresh to trust the new binary",
					path, hex.EncodeToString(onDisk), hex.EncodeToString(sum), pinSource(h.sums))}
		}
	}
	var refusal *Refusal
	if errors.As(err, &refusal) {
		h.metrics.PluginRefused(name, refusal.Reason)
		h.log.Error("strategy plugin refused: its binary is not the one trusted", "strategy", name, "path", path, "reason", refusal.Reason, "error", err)
	}
	if err != nil {
		if sum == nil {
			return "", err
		}
		return hex.EncodeToString(sum), err
	}
	if h.sums.listed != nil && wantSum != nil && !bytes.Equal(wantSum, sum) {
		h.log.Warn("the job first ran another build of this plugin; SHA256SUMS lists the one on disk, so it is trusted",
			"strategy", name, "job_sha256", want, "listed_sha256", hex.EncodeToString(sum))
	}
	return hex.EncodeToString(sum), nil
}

// classify names why a call failed. A deadline that was the caller's (its
// context expires no later than the plugin timeout) is the caller giving up,
// not the plugin hanging: gRPC may report it a moment before the caller's
// context itself is done.
func classify(parent, call context.Context, in *instance, err error) Reason {
	deadline := errors.Is(call.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded
	switch {
	case parent.Err() != nil:
		return ReasonCanceled
	case deadline && callersDeadline(parent, call):
		return ReasonCanceled
	case deadline:
		return ReasonTimeout
	case in.exited() || status.Code(err) == codes.Unavailable:
		return ReasonCrash
	default:
		return ReasonError
	}
}

// callersDeadline reports whether parent's deadline is the one that bounds
// call.
func callersDeadline(parent, call context.Context) bool {
	pd, ok := parent.Deadline()
	if !ok {
		return false
	}
	cd, _ := call.Deadline()
	return !pd.After(cd)
}

// PID returns the process id of strategy name's running plugin, 0 if none.
func (h *Host) PID(name string) int {
	h.mu.Lock()
	sv := h.supervisors[name]
	h.mu.Unlock()
	if sv == nil {
		return 0
	}
	return sv.pid()
}

// Restarts returns how many times strategy name's plugin was restarted.
func (h *Host) Restarts(name string) int {
	h.mu.Lock()
	sv := h.supervisors[name]
	h.mu.Unlock()
	if sv == nil {
		return 0
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.restarts
}

// Close kills every plugin process and waits for background starts and
// kills to finish. Later calls fail with ErrClosed.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	svs := make([]*supervisor, 0, len(h.supervisors))
	for _, sv := range h.supervisors {
		svs = append(svs, sv)
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, sv := range svs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sv.close()
		}()
	}
	wg.Wait()
	h.wg.Wait()
	if err := os.RemoveAll(h.sockDir); err != nil {
		h.log.Warn("removing the plugins' socket directory", "dir", h.sockDir, "error", err)
	}
}
