package planner

// Size limits on requests, so that a hostile or broken caller cannot make the
// sidecar allocate without bound. Each is far above any real job.
const (
	MaxWorldSize      = 65536
	MaxSlotsPerRank   = 4096
	MaxLayers         = 4096
	MaxExperts        = 65536
	MaxTotalSlots     = 1 << 22 // sum over layers of world_size*slots_per_rank
	MaxParamNumel     = 1 << 36 // elements of one expert's flattened parameters
	MaxBytesPerParam  = 16
	MaxOptimizerBytes = 64
	MaxJobIDLen       = 128
	MaxOptions        = 64
	MaxOptionKeyLen   = 128
	MaxOptionValueLen = 4096
	MaxJobs           = 1024
	// maxProblems caps the problems one ValidationError lists.
	maxProblems = 20
)

// Limits on what jobs may cost the sidecar, checked at registration from the
// job's shape (see jobShape): the design's largest job (64 layers of 256
// experts on 256 ranks with 4 slots each) costs about 10 MiB.
const (
	// MaxJobBytes bounds the memory one job may make the sidecar hold.
	MaxJobBytes = 256 << 20
	// MaxTotalJobBytes bounds the memory all registered jobs together may
	// make the sidecar hold.
	MaxTotalJobBytes = 1 << 30
	// MaxMessageBytes is the gRPC message limit: every response of an
	// accepted job fits in it.
	MaxMessageBytes = 64 << 20
	// MaxNoteBytes bounds a plan's note; a longer one is cut.
	MaxNoteBytes = 4096
)
