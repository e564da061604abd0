package testbin

// RawCodec is a gRPC codec that sends and receives messages as the bytes
// they are (*[]byte), under the content subtype "proto": a client with it
// can put any bytes on the wire, and receive a response without decoding
// it. Pass it with grpc.ForceCodec.
type RawCodec struct{}

// Marshal returns the bytes v (a *[]byte) points to.
func (RawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

// Unmarshal copies data into v (a *[]byte).
func (RawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

// Name is the content subtype of protobuf messages.
func (RawCodec) Name() string { return "proto" }
