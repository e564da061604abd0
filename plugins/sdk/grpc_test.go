package sdk

import (
	"context"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"
)

// TestAdapterPairInProcess runs GRPCServer and GRPCClient over a real
// in-process gRPC connection.
func TestAdapterPairInProcess(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	pb.RegisterStrategyServer(srv, &GRPCServer{Impl: rotate{}})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := &GRPCClient{Client: pb.NewStrategyClient(conn)}

	if got, want := client.Info(), (rotate{}).Info(); !reflect.DeepEqual(got, want) {
		t.Errorf("Info over gRPC = %+v, want %+v", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := sampleRequest()
	req.Options = map[string]string{"fail": "false"}
	got, err := client.Plan(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := rotate{}.Plan(ctx, req)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Plan over gRPC = %+v, want %+v", got, want)
	}
	req.Options["fail"] = "true"
	if _, err := client.Plan(ctx, req); err == nil || !strings.Contains(err.Error(), "asked to fail") {
		t.Errorf("failing Plan over gRPC: got %v, want the strategy's error", err)
	}
}
