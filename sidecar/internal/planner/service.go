// Package planner is the sidecar's Planner service without its transport:
// it validates requests, keeps each job's load history and plan in force,
// asks the job's strategy for the next plan, and serves the last valid (or
// the static) plan when the strategy fails.
package planner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/metrics"
)

// Strategies is what the service needs from the plugin host.
type Strategies interface {
	// Has reports why strategy name cannot be loaded, nil when it can.
	Has(name string) error
	// Names lists the available strategies.
	Names() ([]string, error)
	// Info describes strategy name, starting it if needed.
	Info(ctx context.Context, name string) (host.Info, error)
	// List describes every available strategy.
	List(ctx context.Context) ([]host.Info, error)
	// Plan asks strategy name for a plan and validates it; every failure is
	// a *host.Failure.
	Plan(ctx context.Context, name string, req *sdk.Request) (*sdk.Response, error)
	// Trust decides the SHA-256 strategy name's binary must have for a job
	// that first saw the digest want ("" for none) and checks the binary; a
	// refusal is a *host.Refusal (see host.Host.Trust).
	Trust(name, want string) (string, error)
	// ValidateOptions has strategy name check a job's options: an
	// *sdk.OptionsError refuses them, nil accepts them, any other error
	// means they could not be checked.
	ValidateOptions(ctx context.Context, name string, opts map[string]string) error
}

// Service holds the registered jobs. It is safe for concurrent use; reports
// of one job are serialized.
type Service struct {
	strategies Strategies
	metrics    *metrics.Metrics
	log        hclog.Logger
	limits     costLimits

	mu              sync.RWMutex
	jobs            map[string]*job
	held, pending   uint64   // bytes the registered jobs, and those being registered, may hold (jobShape)
	hw              Hardware // nil: no discovery (see SetHardware)
	slotMemFraction float64
}

// New returns a Service planning through strategies. m and log may be nil.
func New(strategies Strategies, m *metrics.Metrics, log hclog.Logger) *Service {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Service{strategies: strategies, metrics: m, log: log, jobs: map[string]*job{}, limits: defaultCostLimits}
}

func (s *Service) knownStrategy(name string) error {
	err := s.strategies.Has(name)
	if err == nil {
		return nil
	}
	names, lerr := s.strategies.Names()
	if lerr != nil || len(names) == 0 {
		return fmt.Errorf("%v; no strategy plugins are available", err)
	}
	return fmt.Errorf("%v; available strategies: %s", err, strings.Join(names, ", "))
}

// RegisterJob validates and registers a job, replacing any job of the same
// id, and returns its shard layout, initial (static) plan and the topology
// in force, with the values the request left 0 taken from discovery (see
// SetHardware). A job is registered only when its response can be sent: it
// fits in MaxMessageBytes and the caller still waits for it.
func (s *Service) RegisterJob(ctx context.Context, req *pb.RegisterJobRequest) (*pb.RegisterJobResponse, error) {
	var defaults []string
	if req != nil {
		var err error
		if req, defaults, err = s.applyDefaults(ctx, req); err != nil {
			return nil, err
		}
	}
	pred, err := s.validateRegister(req)
	if err != nil {
		return nil, err
	}
	id := req.GetJobId()
	if id == "" {
		id = newJobID()
	}
	cost := shapeOf(req).memoryBytes()
	if err := s.reserve(id, cost); err != nil {
		return nil, err
	}
	committed := false
	defer func() {
		if !committed {
			s.release(cost)
		}
	}()
	j := newJob(id, req, pred)
	j.cost = cost
	info, reason, note, err := s.admit(ctx, j, req)
	if err != nil {
		return nil, err
	}
	source := pb.PlanSource_PLAN_SOURCE_STRATEGY
	if reason != "" {
		source = j.fallbackSource()
	}
	j.info = strategyInfoProto(info)
	j.window = loadWindow(info.Info, j.options, j.costModel, j.topo)
	initial := j.buildPlan(0, j.slots, j.predictions(), source, note, 0)
	initial.FallbackReason = string(reason)
	j.plan.Store(initial)
	resp := &pb.RegisterJobResponse{
		JobId: id, ShardLayout: shardLayout(j.numel, j.topo.WorldSize),
		InitialPlan: j.plan.Load(), Strategy: j.info,
		Topology: sdk.TopologyToProto(j.topo), Defaults: defaults,
		PluginRefused: j.refused,
	}
	if n := uint64(proto.Size(resp)); n > s.limits.message {
		return nil, fmt.Errorf("%w: the RegisterJobResponse of job %q would be %s, over the message limit of %s (the strategy's description takes %s); plan fewer layers or ranks per request, or shorten the strategy's description",
			ErrResponseTooLarge, id, mib(n), mib(s.limits.message), mib(uint64(proto.Size(j.info))))
	}
	if err := ctx.Err(); err != nil {
		// Nobody waits for the answer: registering would leave a job its
		// caller never learns of.
		return nil, err
	}

	j.mu.Lock()
	defer j.mu.Unlock()
	old, err := s.commit(j)
	if err != nil {
		return nil, err
	}
	committed = true
	if old != nil {
		old.mu.Lock()
		old.retired = true
		old.mu.Unlock()
		s.metrics.ForgetJob(id)
	}
	s.metrics.ObservePlan(id, j.layerBalance(), j.plan.Load().GetMaxOverMean(), j.replicas())
	s.log.Info("job registered", "job", id, "strategy", j.strategy, "world_size", j.topo.WorldSize,
		"slots_per_rank", j.topo.SlotsPerRank, "layers", len(j.experts), "predictor", j.predictor.String(),
		"memory_bound_mib", cost>>20, "replaced", old != nil, "history", req.GetHistory() != nil)
	if j.refused != "" {
		s.log.Error("job registered with its strategy plugin refused: every plan is its placement in force until it registers again with a trusted binary",
			"job", id, "strategy", j.strategy, "refused", j.refused)
	}
	for _, d := range defaults {
		s.log.Info("job default from discovery", "job", id, "default", d)
	}
	return resp, nil
}

// reserve sets cost bytes aside for a registration of job id, within
// MaxJobs and MaxTotalJobBytes; the job of that id, which the registration
// replaces, counts as freed. (Two concurrent registrations of one id both
// count it freed: the total may then be passed by one job until either
// commits.)
func (s *Service) reserve(id string, cost uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.jobs[id]
	if old == nil && len(s.jobs) >= MaxJobs {
		return errTooManyJobs()
	}
	inUse := s.held + s.pending
	if old != nil {
		inUse -= old.cost
	}
	if inUse+cost > s.limits.total {
		return fmt.Errorf("%w: this job may make the sidecar hold about %s and the %d registered jobs (and registrations in progress) about %s, over the limit of %s for all jobs; re-register an existing job_id, register a smaller job, or restart the sidecar",
			ErrMemoryBudget, mib(cost), len(s.jobs), mib(inUse), mib(s.limits.total))
	}
	s.pending += cost
	return nil
}

func errTooManyJobs() error {
	return fmt.Errorf("%w: %d jobs are registered, the limit; re-register an existing job_id or restart the sidecar", ErrTooManyJobs, MaxJobs)
}

// release gives back a reservation whose registration failed.
func (s *Service) release(cost uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending -= cost
}

// commit turns j's reservation into a registered job, replacing (and
// returning) the job of the same id.
func (s *Service) commit(j *job) (old *job, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old = s.jobs[j.id]
	if old == nil && len(s.jobs) >= MaxJobs {
		// Another registration took the last place meanwhile.
		return nil, errTooManyJobs()
	}
	s.pending -= j.cost
	s.held += j.cost
	if old != nil {
		s.held -= old.cost
	}
	s.jobs[j.id] = j
	return old, nil
}

func (s *Service) validateRegister(req *pb.RegisterJobRequest) (predictorConfig, error) {
	if req == nil {
		return predictorConfig{}, &ValidationError{Request: "RegisterJobRequest", Problems: []string{"request: missing"}}
	}
	return validateRegister(req, s.limits, s.knownStrategy)
}

// lookup returns a registered job.
func (s *Service) lookup(id string) (*job, error) {
	var p problems
	validateJobID(id, false, &p)
	if err := p.err("request"); err != nil {
		return nil, err
	}
	s.mu.RLock()
	j := s.jobs[id]
	s.mu.RUnlock()
	if j == nil {
		return nil, fmt.Errorf("%w %q: call RegisterJob first (the sidecar may have restarted)", ErrUnknownJob, id)
	}
	return j, nil
}

// ReportLoads records one iteration's loads and returns the plan for the
// next iteration: the strategy's, or the last valid plan when it fails.
func (s *Service) ReportLoads(ctx context.Context, req *pb.ReportLoadsRequest) (*pb.ReportLoadsResponse, error) {
	start := time.Now()
	j, err := s.lookup(req.GetJobId())
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := validateReport(req, j.experts); err != nil {
		return nil, err
	}
	for l, ll := range req.GetLayers() {
		j.hist[l].add(ll.GetTokens(), j.predictor.alpha)
	}
	it := req.GetIteration() + 1
	predicted := j.predictions()
	var resp *sdk.Response
	if j.refused != "" {
		err = &host.Failure{Strategy: j.strategy, Reason: host.ReasonRefused, Err: errors.New(j.refused)}
	} else {
		resp, err = s.strategies.Plan(ctx, j.strategy, j.strategyRequest(it, predicted))
	}
	var plan *pb.Plan
	if err == nil {
		plan = j.buildPlan(it, resp.Layers, predicted, pb.PlanSource_PLAN_SOURCE_STRATEGY, resp.Note, resp.MigratedBytes)
		j.slots = resp.Layers
		j.hadValid = true
	} else {
		var f *host.Failure
		if errors.As(err, &f) && f.Reason == host.ReasonCanceled {
			// The caller gave up; nobody waits for a plan. The loads stay
			// recorded.
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			return nil, context.DeadlineExceeded
		}
		plan = s.fallback(j, it, predicted, err)
	}
	j.plan.Store(plan)
	if !j.retired {
		s.metrics.ObservePlan(j.id, j.layerBalance(), plan.GetMaxOverMean(), j.replicas())
	}
	s.metrics.ObservePlanLatency(j.strategy, time.Since(start).Seconds())
	return &pb.ReportLoadsResponse{Plan: plan}, nil
}

// fallback is the plan served when the strategy failed: the placement in
// force, described under the new predictions.
func (s *Service) fallback(j *job, it uint64, predicted [][]float64, cause error) *pb.Plan {
	reason := string(host.ReasonError)
	var f *host.Failure
	if errors.As(cause, &f) {
		reason = string(f.Reason)
	}
	source := j.fallbackSource()
	note := fmt.Sprintf("%v; serving %s", cause, fallbackWhat(source))
	s.metrics.FallbackServed(j.strategy, reason)
	s.log.Warn("strategy failed; serving a fallback plan", "job", j.id, "iteration", it, "strategy", j.strategy, "reason", reason, "source", source.String(), "error", cause)
	plan := j.buildPlan(it, j.slots, predicted, source, note, 0)
	plan.FallbackReason = reason
	return plan
}

// fallbackSource is the source of a fallback plan of j: the last valid plan,
// or the static one before any.
func (j *job) fallbackSource() pb.PlanSource {
	if j.hadValid {
		return pb.PlanSource_PLAN_SOURCE_LAST_VALID
	}
	return pb.PlanSource_PLAN_SOURCE_STATIC_FALLBACK
}

func fallbackWhat(source pb.PlanSource) string {
	if source == pb.PlanSource_PLAN_SOURCE_LAST_VALID {
		return "the last valid plan"
	}
	return "the static plan"
}

// ExportJob returns a job's load history, which RegisterJobRequest.history
// restores (a checkpoint of the job's predictions).
func (s *Service) ExportJob(_ context.Context, req *pb.ExportJobRequest) (*pb.ExportJobResponse, error) {
	j, err := s.lookup(req.GetJobId())
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	resp := &pb.ExportJobResponse{JobId: j.id, History: exportHistory(j.hist)}
	j.mu.Unlock()
	if n := uint64(proto.Size(resp)); n > s.limits.message {
		return nil, fmt.Errorf("%w: the history of job %q is %s, over the message limit of %s; checkpoint without it (a resumed job then predicts from fresh reports)",
			ErrResponseTooLarge, j.id, mib(n), mib(s.limits.message))
	}
	return resp, nil
}

// GetPlan returns the plan in force for a job.
func (s *Service) GetPlan(_ context.Context, req *pb.GetPlanRequest) (*pb.Plan, error) {
	j, err := s.lookup(req.GetJobId())
	if err != nil {
		return nil, err
	}
	return j.plan.Load(), nil
}

// ListStrategies describes the available strategies.
func (s *Service) ListStrategies(ctx context.Context, _ *pb.ListStrategiesRequest) (*pb.ListStrategiesResponse, error) {
	infos, err := s.strategies.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing strategies: %w", err)
	}
	out := &pb.ListStrategiesResponse{}
	for _, i := range infos {
		out.Strategies = append(out.Strategies, strategyInfoProto(i))
	}
	return out, nil
}

func strategyInfoProto(i host.Info) *pb.StrategyInfo {
	p := sdk.InfoToProto(i.Info)
	p.Path, p.Sha256 = i.Path, i.SHA256
	return p
}

func newJobID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "job-" + hex.EncodeToString(b)
}
