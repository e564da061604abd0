package planner

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnknownJob wraps every request naming a job that is not registered.
var ErrUnknownJob = errors.New("unknown job")

// ErrTooManyJobs is returned when registering beyond MaxJobs jobs.
var ErrTooManyJobs = errors.New("too many jobs")

// ErrMemoryBudget is returned when a job would take the memory the
// registered jobs may hold beyond MaxTotalJobBytes.
var ErrMemoryBudget = errors.New("sidecar memory budget exhausted")

// ErrResponseTooLarge is returned when a response would exceed
// MaxMessageBytes; the request changed nothing.
var ErrResponseTooLarge = errors.New("response too large")

// ValidationError lists every problem found in one request. Each problem
// names the field and the fix.
type ValidationError struct {
	Request  string
	Problems []string
}

func (e *ValidationError) Error() string {
	n := len(e.Problems)
	noun := "problems"
	if n == 1 {
		noun = "problem"
	}
	return fmt.Sprintf("invalid %s (%d %s): %s", e.Request, n, noun, strings.Join(e.Problems, "; "))
}

// problems collects validation problems, keeping the first maxProblems and
// counting the rest.
type problems struct {
	list    []string
	dropped int
}

func (p *problems) addf(format string, args ...any) {
	if len(p.list) >= maxProblems {
		p.dropped++
		return
	}
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

func (p *problems) err(request string) error {
	if len(p.list) == 0 {
		return nil
	}
	list := p.list
	if p.dropped > 0 {
		list = append(list, fmt.Sprintf("... and %d more problems", p.dropped))
	}
	return &ValidationError{Request: request, Problems: list}
}
