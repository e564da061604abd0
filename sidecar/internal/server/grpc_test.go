package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
)

func TestToStatusCodes(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{&planner.ValidationError{Request: "R", Problems: []string{"x: fix it"}}, codes.InvalidArgument},
		{fmt.Errorf("%w %q: call RegisterJob first", planner.ErrUnknownJob, "j"), codes.NotFound},
		{fmt.Errorf("%w: 1024 jobs", planner.ErrTooManyJobs), codes.ResourceExhausted},
		{fmt.Errorf("%w: 1 GiB", planner.ErrMemoryBudget), codes.ResourceExhausted},
		{fmt.Errorf("%w: 70 MiB", planner.ErrResponseTooLarge), codes.ResourceExhausted},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{errors.New("boom"), codes.Internal},
	}
	for _, tc := range tests {
		err := toStatus(tc.err)
		if got := status.Code(err); got != tc.code {
			t.Errorf("%v: got %v, want %v", tc.err, got, tc.code)
		}
		if tc.err != nil && status.Convert(err).Message() != tc.err.Error() && tc.code != codes.DeadlineExceeded && tc.code != codes.Canceled {
			t.Errorf("%v: message %q, want the error's text", tc.err, status.Convert(err).Message())
		}
	}
}
