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
