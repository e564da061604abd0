package transport

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// BufferPool is the gRPC buffer pool of both ends of the sidecar-plugin
// connection and of the sidecar's own server. gRPC's default pool clears the
// whole capacity of every buffer it hands out, and its largest tier is 1 MiB:
// a plan of a few hundred KB then costs a 1 MiB clear per message at each
// end, about a tenth of a millisecond each. This pool keeps power-of-two
// tiers from 256 B to 64 MiB and does not clear: gRPC fills every buffer it
// takes (a read of a known length, or an encode) before it reads from it.
var BufferPool mem.BufferPool = newDirtyPool()

const (
	minPoolShift = 8  // 256 B
	maxPoolShift = 26 // 64 MiB
)

type dirtyPool struct {
	tiers [maxPoolShift - minPoolShift + 1]sync.Pool
}

func newDirtyPool() *dirtyPool { return &dirtyPool{} }

// tier returns the index of the smallest tier holding n bytes, or -1 when n
// is above the largest.
func tier(n int) int {
	if n <= 1<<minPoolShift {
		return 0
	}
	s := bits.Len(uint(n - 1))
	if s > maxPoolShift {
		return -1
	}
	return s - minPoolShift
}

// Get returns a buffer of length n whose contents are unspecified.
func (p *dirtyPool) Get(n int) *[]byte {
	t := tier(n)
	if t < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.tiers[t].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(t+minPoolShift))
	return &b
}

// Put returns a buffer taken from Get; buffers of other capacities (those
// above the largest tier, or not from this pool) are left to the collector.
func (p *dirtyPool) Put(b *[]byte) {
	c := cap(*b)
	t := tier(c)
	if t < 0 || c != 1<<(t+minPoolShift) {
		return
	}
	*b = (*b)[:0]
	p.tiers[t].Put(b)
}

// Codec is gRPC's protobuf codec with BufferPool in place of gRPC's default
// pool, whose buffers it otherwise takes for every message above a few KB it
// encodes and for every multi-frame message it decodes. Both ends of the
// plugin connection and the sidecar's server use it (ForceServerCodecV2,
// ForceCodecV2), so nothing outside them changes.
var Codec encoding.CodecV2 = poolCodec{}

type poolCodec struct{}

func (poolCodec) Name() string { return "proto" }

func (poolCodec) Marshal(v any) (mem.BufferSlice, error) {
	m := messageV2Of(v)
	if m == nil {
		return nil, fmt.Errorf("proto: cannot marshal %T, want a proto.Message", v)
	}
	size := proto.Size(m)
	// UseCachedSize reuses the Size just computed; the message is not
	// mutated in between.
	opts := proto.MarshalOptions{UseCachedSize: true}
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := BufferPool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		BufferPool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, BufferPool)}, nil
}

func (poolCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m := messageV2Of(v)
	if m == nil {
		return fmt.Errorf("proto: cannot unmarshal into %T, want a proto.Message", v)
	}
	buf := data.MaterializeToBuffer(BufferPool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// messageV2Of is v as an APIv2 message, adapting APIv1 ones as gRPC's own
// codec does; nil when v is neither.
func messageV2Of(v any) proto.Message {
	switch v := v.(type) {
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(v)
	case protoadapt.MessageV2:
		return v
	}
	return nil
}
