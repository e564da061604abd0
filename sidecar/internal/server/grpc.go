// Package server carries the planner service over gRPC: the Planner service
// of swiftmoe.v1, the standard health service, error mapping to gRPC codes,
// and the listeners of the daemon.
package server

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
	"github.com/swiftmoe/swiftmoe/internal/transport"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
)

// MaxMessageBytes bounds one request or response; every response of a job
// the planner accepts fits within it.
const MaxMessageBytes = planner.MaxMessageBytes

// plannerServer adapts planner.Service to the generated Planner service.
type plannerServer struct {
	pb.UnimplementedPlannerServer
	svc *planner.Service
}

func (s *plannerServer) RegisterJob(ctx context.Context, req *pb.RegisterJobRequest) (*pb.RegisterJobResponse, error) {
	resp, err := s.svc.RegisterJob(ctx, req)
	return resp, toStatus(err)
}

func (s *plannerServer) ReportLoads(ctx context.Context, req *pb.ReportLoadsRequest) (*pb.ReportLoadsResponse, error) {
	resp, err := s.svc.ReportLoads(ctx, req)
	return resp, toStatus(err)
}

func (s *plannerServer) GetPlan(ctx context.Context, req *pb.GetPlanRequest) (*pb.Plan, error) {
	resp, err := s.svc.GetPlan(ctx, req)
	return resp, toStatus(err)
}

func (s *plannerServer) ListStrategies(ctx context.Context, req *pb.ListStrategiesRequest) (*pb.ListStrategiesResponse, error) {
	resp, err := s.svc.ListStrategies(ctx, req)
	return resp, toStatus(err)
}

// toStatus maps planner errors to gRPC codes; the message keeps the field
// and the fix.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var ve *planner.ValidationError
	switch {
	case errors.As(err, &ve):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, planner.ErrUnknownJob):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, planner.ErrTooManyJobs), errors.Is(err, planner.ErrMemoryBudget), errors.Is(err, planner.ErrResponseTooLarge):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

// New returns a gRPC server carrying svc and a health service that reports
// SERVING for the whole server and for swiftmoe.v1.Planner. A handler panic
// becomes an Internal error and a log line, never a crash.
func New(svc *planner.Service, log hclog.Logger) (*grpc.Server, *health.Server) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		// A plan of the largest target job is about 250 KB: buffers of
		// that order write it in a few syscalls instead of one per 32 KiB.
		grpc.WriteBufferSize(transport.BufferBytes),
		grpc.ReadBufferSize(transport.BufferBytes),
		experimental.BufferPool(transport.BufferPool),
		grpc.ForceServerCodecV2(transport.Codec),
		grpc.ChainUnaryInterceptor(recoverInterceptor(log)),
	)
	pb.RegisterPlannerServer(gs, &plannerServer{svc: svc})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(pb.Planner_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	return gs, hs
}

func recoverInterceptor(log hclog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("handler panic", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, fmt.Sprintf("internal error in %s; see the sidecar log", info.FullMethod))
			}
		}()
		return handler(ctx, req)
	}
}
