package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/discover"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/server"
)

const (
	// maxPluginTimeout bounds --plugin-timeout.
	maxPluginTimeout = time.Minute
	// stopGrace is how long a graceful stop waits for RPCs in flight.
	stopGrace = 5 * time.Second
	// parentPoll is the period of the --exit-with-parent check.
	parentPoll = 200 * time.Millisecond
	// discoveryMaxAge is how long a hardware report serves registrations
	// before it is taken again (free GPU memory changes as jobs load).
	discoveryMaxAge = 10 * time.Second
)

type serveFlags struct {
	listen, pluginsDir, metricsListen, logLevel string
	pluginTimeout                               time.Duration
	exitWithParent, allowRemote, discover       bool
	metricsPerExpert                            bool
	slotMemFraction                             float64
}

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", "[flags]",
		"Serves the Planner gRPC API to the SwiftMoE Python shim, hosting strategy plugins\n"+
			"(swiftmoe-strategy-NAME binaries in the plugins directory). Prints one line,\n"+
			"'listening on ADDRESS', to stdout once the socket accepts; logs go to stderr.\n"+
			"SIGTERM, SIGINT or SIGHUP stops it gracefully: plugins are killed and the socket removed.",
		"swiftmoe-sidecar serve --plugins-dir ./bin --metrics-listen 127.0.0.1:9464 --exit-with-parent", stdout, stderr)
	var f serveFlags
	fs.StringVar(&f.listen, "listen", "", "gRPC `ADDR`: unix:///abs/path.sock, or tcp://HOST:PORT (loopback unless --allow-remote);\ndefault: sidecar.sock (mode 0600) in a fresh private directory (mode 0700) under $TMPDIR")
	fs.StringVar(&f.pluginsDir, "plugins-dir", "", "`DIR` of the swiftmoe-strategy-NAME plugin binaries (default: the sidecar executable's directory)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "`HOST:PORT` to serve Prometheus /metrics on, loopback unless --allow-remote (default: off)")
	fs.DurationVar(&f.pluginTimeout, "plugin-timeout", host.DefaultCallTimeout, "deadline of one strategy call; a plugin that misses it is restarted and the last valid plan served")
	fs.BoolVar(&f.metricsPerExpert, "metrics-per-expert", false, "also export swiftmoe_expert_replicas{job,layer,expert}, at most "+strconv.Itoa(metrics.MaxExpertSeries)+" series over all jobs\n(per-job and per-layer series are always exported, at most "+strconv.Itoa(metrics.MaxLayerSeries)+" per-layer ones)")
	fs.BoolVar(&f.exitWithParent, "exit-with-parent", false, "stop when the parent process dies, so a crashed trainer leaves no sidecar behind")
	fs.BoolVar(&f.allowRemote, "allow-remote", false, "allow --listen and --metrics-listen on non-loopback addresses")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `LEVEL`: trace, debug, info, warn or error")
	fs.BoolVar(&f.discover, "discover", true, "discover this machine's GPUs and NICs (as the discover command does) for the defaults of jobs\nthat leave them 0: slots_per_rank from free GPU memory, link bandwidths from NVLink/PCIe and NICs;\n--discover=false makes such jobs give their slots, and leaves unknown bandwidths 0")
	fs.Float64Var(&f.slotMemFraction, "slot-memory-fraction", planner.DefaultSlotMemoryFraction, "share of the smallest free GPU memory that automatic slots_per_rank may fill with expert\nweights and gradients, in (0, 1]; the rest is left to activations and the dense model")
	if err := fs.parse(args); err != nil {
		return done(err)
	}
	if !(f.slotMemFraction > 0 && f.slotMemFraction <= 1) {
		return fs.fail("--slot-memory-fraction %g is out of range; use a share of free GPU memory in (0, 1], e.g. %g", f.slotMemFraction, planner.DefaultSlotMemoryFraction)
	}
	if f.pluginTimeout <= 0 || f.pluginTimeout > maxPluginTimeout {
		return fs.fail("--plugin-timeout %v is out of range; use a duration in (0, %v], e.g. 200ms", f.pluginTimeout, maxPluginTimeout)
	}
	level := hclog.LevelFromString(f.logLevel)
	if level == hclog.NoLevel {
		return fs.fail("--log-level %q is not a level; use trace, debug, info, warn or error", f.logLevel)
	}
	// Addresses of the wrong form are command-line mistakes (exit 2); a
	// failure to bind a well-formed one is not.
	if err := server.CheckListen(f.listen, f.allowRemote); err != nil {
		return fs.fail("%v", err)
	}
	if f.metricsListen != "" {
		if err := server.CheckHostPort("--metrics-listen", f.metricsListen, f.allowRemote); err != nil {
			return fs.fail("%v", err)
		}
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "swiftmoe-sidecar", Output: stderr, Level: level})
	return serve(f, stdout, log)
}

func serve(f serveFlags, stdout io.Writer, log hclog.Logger) error {
	// A closed stdout or stderr (the parent that read them died) must not
	// kill the daemon with SIGPIPE before it cleans up: writes to them fail
	// instead, and logging goes on to nowhere.
	signal.Ignore(syscall.SIGPIPE)
	// Catch signals from the start, so that a stop request during startup
	// still removes the socket and kills the plugins. SIGHUP (a closed
	// terminal) stops it the same way.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	dir, err := pluginsDir(f.pluginsDir)
	if err != nil {
		return err
	}
	ln, err := server.Listen(f.listen, f.allowRemote)
	if err != nil {
		return err
	}
	defer func() {
		if err := ln.Close(); err != nil {
			log.Warn("removing the socket", "error", err)
		}
	}()
	// With the default socket, the plugins' sockets live in its private
	// directory too, so one directory holds everything the daemon leaves.
	sockDir := ""
	if ln.PrivateDir() != "" {
		sockDir = filepath.Join(ln.PrivateDir(), "plugins")
	}
	m := metrics.NewWith(metrics.Options{PerExpert: f.metricsPerExpert})
	h, err := host.New(host.Options{Dir: dir, CallTimeout: f.pluginTimeout, Logger: log, Metrics: m, SocketDir: sockDir})
	if err != nil {
		return fmt.Errorf("--plugins-dir: %w", err)
	}
	defer h.Close()
	svc := planner.New(h, m, log)
	if f.discover {
		// Discovery starts now, so that the first registration finds it done.
		c := discover.NewCache(discover.NewDiscoverer(), discoveryMaxAge)
		c.Prefetch()
		if err := svc.SetHardware(c, f.slotMemFraction); err != nil {
			return err
		}
	}
	gs, hs := server.New(svc, log)

	var ms *server.MetricsServer
	if f.metricsListen != "" {
		if ms, err = server.ServeMetrics(f.metricsListen, f.allowRemote, m.Handler()); err != nil {
			return err
		}
		log.Info("serving metrics", "url", "http://"+ms.Addr()+"/metrics")
	}

	if f.exitWithParent {
		go watchParent(ctx, stop, log)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	if _, err := fmt.Fprintf(stdout, "listening on %s\n", ln.URL); err != nil {
		log.Warn("writing the listening line", "error", err)
	}
	log.Info("serving", "address", ln.URL, "plugins_dir", dir, "plugin_timeout", f.pluginTimeout, "discover", f.discover)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case serveErr = <-served:
		log.Error("gRPC server stopped", "error", serveErr)
	}
	hs.Shutdown()
	gracefulStop(gs.GracefulStop, gs.Stop)
	shutdownMetrics(ms, log)
	if serveErr != nil {
		return fmt.Errorf("serving %s: %w", ln.URL, serveErr)
	}
	return nil
}

// gracefulStop runs graceful, and hard if graceful takes over stopGrace.
func gracefulStop(graceful, hard func()) {
	done := make(chan struct{})
	go func() {
		graceful()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopGrace):
		hard()
		<-done
	}
}

func shutdownMetrics(ms *server.MetricsServer, log hclog.Logger) {
	if ms == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	if err := ms.Shutdown(ctx); err != nil {
		log.Warn("stopping the metrics server", "error", err)
	}
}

// watchParent calls stop once the parent process has died (the sidecar is
// then reparented, so getppid changes).
func watchParent(ctx context.Context, stop func(), log hclog.Logger) {
	ppid := os.Getppid()
	if ppid == 1 {
		log.Warn("--exit-with-parent: the parent is already init (pid 1); its death cannot be seen")
		return
	}
	t := time.NewTicker(parentPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if now := os.Getppid(); now != ppid {
				log.Warn("parent process died; stopping", "parent", ppid)
				stop()
				return
			}
		}
	}
}
