package planner

import pb "github.com/swiftmoe/swiftmoe/bridge/gen/swiftmoe/v1"

// remapSummary is the weight transfer from the plan in force (prev, nil when
// there is none) to next: every slot of next receives every shard of its
// expert except the one its own rank owns. Rank r thus receives, per slot it
// holds, numel minus its own shard, and sends its shard to every slot on
// another rank. numel[l] and bytesPerParam size the shards.
func remapSummary(prev, next [][]int, numel []uint64, bytesPerParam uint64, worldSize, slotsPerRank int) *pb.RemapSummary {
	send := make([]uint64, worldSize)
	recv := make([]uint64, worldSize)
	var changed uint64
	for l, slots := range next {
		n := numel[l]
		// Every rank holds slotsPerRank slots and receives, for each, the
		// shards it does not own; it sends its own shard to each slot on
		// another rank.
		others := uint64((worldSize - 1) * slotsPerRank)
		for r := 0; r < worldSize; r++ {
			_, own := ShardBounds(n, r, worldSize)
			recv[r] += uint64(slotsPerRank) * (n - own) * bytesPerParam
			send[r] += others * own * bytesPerParam
		}
		if prev == nil {
			changed += uint64(len(slots))
			continue
		}
		for i, e := range slots {
			if prev[l][i] != e {
				changed++
			}
		}
	}
	var total uint64
	for _, b := range send {
		total += b
	}
	return &pb.RemapSummary{SendBytes: send, RecvBytes: recv, TotalBytes: total, ChangedSlots: changed}
}
